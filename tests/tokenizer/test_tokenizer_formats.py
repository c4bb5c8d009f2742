"""Vocabulary files (openqwen.tokenizer.formats): qwen.tiktoken, tokenizer.json, vocab.json + merges.txt,
GGUF and our saved folder all give the same vocabulary; corrupt files get errors that name the fault."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from openqwen.tokenizer import QwenTokenizer, TokenizerError, Vocabulary, derive_merges, token_bytes_to_str
from openqwen.tokenizer import formats
from tokenizer_samples import small_copy

GGUF_ARTIFACT = "qwen25-coder-0.5b-instruct-gguf"
TEXT = "the theme then: thin things, 12 the 世界 🤖\n\n  the"


def tiny_vocabulary() -> Vocabulary:
    """The 256 bytes, then a few merged tokens (each reachable by rank-based BPE from lower ranks)."""
    ranks = {bytes([b]): b for b in range(256)}
    for token in (b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b" th", b"en"):
        ranks[token] = len(ranks)
    specials = {"<|endoftext|>": len(ranks), "<|im_start|>": len(ranks) + 1, "<|im_end|>": len(ranks) + 2}
    return Vocabulary(ranks, specials)


def write_gguf(path: Path, tokens: list[str], types: list[int], merges: list[str], model: str = "gpt2",
               pre: str = "qwen2") -> Path:
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ------------------------------------------------------------------------------ every format, no artifact
def test_every_format_gives_the_same_vocabulary(tmp_path):
    from tokenizers import Tokenizer

    vocab = tiny_vocabulary()
    tok = QwenTokenizer.from_vocabulary(vocab)
    folder = tok.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["qwen.tiktoken", "tokenizer.json", "tokenizer_config.json"]
    hf_json = json.loads((folder / "tokenizer.json").read_text())
    # vocab.json + merges.txt, as a Qwen2 Hugging Face folder ships them
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "vocab.json").write_text(json.dumps(hf_json["model"]["vocab"]))
    (hf_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in hf_json["model"]["merges"]))
    # a GGUF: ordinary tokens (type 1) then the specials (CONTROL, 3), spelled byte-to-unicode
    by_id = sorted(vocab.ranks.items(), key=lambda kv: kv[1])
    gguf_path = write_gguf(tmp_path / "tiny.gguf", [token_bytes_to_str(b) for b, _ in by_id] + list(vocab.special_tokens),
                           [1] * len(by_id) + [3] * 3, [" ".join(m) for m in hf_json["model"]["merges"]])
    loaded = {
        "saved folder": QwenTokenizer.from_pretrained(folder),
        "tokenizer.json": QwenTokenizer.from_pretrained(folder / "tokenizer.json"),
        "vocab.json + merges.txt": QwenTokenizer.from_pretrained(hf_dir),
        "gguf": QwenTokenizer.from_pretrained(gguf_path),
        "qwen.tiktoken alone": QwenTokenizer.from_tiktoken(folder / "qwen.tiktoken", vocab.special_tokens),
    }
    for where, t in loaded.items():
        assert t.vocabulary == vocab, where
        assert t.encode(TEXT) == tok.encode(TEXT), where
    # the derived merges are one per merged token, in rank order
    assert [a + b for a, b in derive_merges(vocab.ranks)] == [b for b, r in by_id if r >= 256]
    # an independent BPE (HF tokenizers, merge priority) on our tokenizer.json gives our ids
    ids = tok.encode(TEXT)
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids == ids
    assert tok.decode(ids) == TEXT and tok.encode(" the") == [vocab.ranks[b" the"]]


def test_saved_config_keeps_pattern_normalisation_and_name(tmp_path):
    vocab = tiny_vocabulary()
    custom = Vocabulary(vocab.ranks, vocab.special_tokens, pattern=r"\S+|\s+", name="nano", normalize=False)
    QwenTokenizer.from_vocabulary(custom).save_pretrained(tmp_path, hf_tokenizer_json=False)
    assert not (tmp_path / "tokenizer.json").exists()
    assert formats.read_vocabulary(tmp_path) == custom
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and config["added_tokens_decoder"]["266"]["content"] == "<|im_start|>"
    assert "<|im_start|>" in config["chat_template"]


def test_a_folder_is_searched_in_a_fixed_order(tmp_path):
    vocab = tiny_vocabulary()
    formats.write_tiktoken_ranks(vocab.ranks, tmp_path / "nano.tiktoken")
    assert formats.read_vocabulary(tmp_path).special_tokens["<|endoftext|>"] == 265  # first-generation numbering
    (tmp_path / "other.tiktoken").write_text("")
    with pytest.raises(TokenizerError, match="no tokenizer found in"):
        formats.read_vocabulary(tmp_path)


# ------------------------------------------------------------------------------ the official files
@pytest.mark.artifacts
def test_tokenizer_json_and_gguf_share_the_vocabulary(tok, qwen2_json, artifact):
    q2 = QwenTokenizer.from_pretrained(qwen2_json)
    assert q2.mergeable_ranks == tok.mergeable_ranks
    assert q2.special_tokens["<|im_end|>"] == 151645 and q2.eos_id == 151643
    g = QwenTokenizer.from_pretrained(artifact(GGUF_ARTIFACT))
    assert g.mergeable_ranks == tok.mergeable_ranks
    hf_specials = {t["content"]: t["id"] for t in json.loads(Path(qwen2_json).read_text())["added_tokens"]}
    assert all(hf_specials[s] == i for s, i in g.special_tokens.items())  # Qwen2.5's specials: a subset of Qwen3's
    assert len(g.special_tokens) == 22 and g.vocab_size == 151665
    text = "def f(x):\n    return x * 12345  # 中文 😀"
    assert g.encode(text) == q2.encode(text) == tok.encode(text)


@pytest.mark.artifacts
def test_loading_a_gguf_tokenizer_imports_no_torch(artifact):
    """The tokenizer reads a GGUF vocabulary with the torch-free header reader: a process that only
    tokenizes (a data pipeline, the tokenizer CLI) never pays torch's import."""
    path = artifact(GGUF_ARTIFACT)
    code = ("import sys\n"
            "from openqwen.tokenizer import QwenTokenizer\n"
            f"tok = QwenTokenizer.from_pretrained({str(path)!r})\n"
            "assert tok.im_end_id == 151645, tok\n"
            "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
            "assert not loaded, f'torch was imported: {loaded[:3]}'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.artifacts
def test_folder_with_vocab_and_merges(tok, qwen2_json, tmp_path):
    data = json.loads(Path(qwen2_json).read_text())
    (tmp_path / "vocab.json").write_text(json.dumps(data["model"]["vocab"], ensure_ascii=False))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in data["model"]["merges"]) + "\n")
    t = QwenTokenizer.from_pretrained(tmp_path)
    assert t.mergeable_ranks == tok.mergeable_ranks and t.im_end_id == 151645


@pytest.mark.artifacts
def test_derived_merges_equal_the_official_merges(tok, qwen2_json):
    """Rank-based BPE turned into a merges list reproduces the released Qwen2 merges exactly."""
    ours = [[token_bytes_to_str(a), token_bytes_to_str(b)] for a, b in derive_merges(tok.mergeable_ranks)]
    official = json.loads(Path(qwen2_json).read_text())["model"]["merges"]
    official = [m.split(" ", 1) if isinstance(m, str) else m for m in official]
    assert len(ours) == 151387
    assert ours == official


@pytest.mark.artifacts
def test_save_pretrained_roundtrip(tok, tmp_path, sample):
    from tokenizers import Tokenizer

    small = small_copy(tok, 3000)
    small.save_pretrained(tmp_path)
    back = QwenTokenizer.from_pretrained(tmp_path)
    assert back.mergeable_ranks == small.mergeable_ranks and back.special_tokens == small.special_tokens
    assert back.vocab_size == 3003 and back.eos_id == 3000 and back.im_end_id == 3002
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    docs = sample[-300:]
    ours = back.encode_batch(docs)
    assert ours == [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
    assert ours == small.encode_batch(docs) and sum(map(len, ours)) > 10_000


# ------------------------------------------------------------------------------ errors
def test_clear_errors_for_missing_or_corrupt_files(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        QwenTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="no tokenizer found"):
        QwenTokenizer.from_pretrained(tmp_path)
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("IQ== 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerError, match="line 2"):
        QwenTokenizer.from_pretrained(bad)
    short = tmp_path / "short.tiktoken"
    short.write_text("IQ== 0\n")
    with pytest.raises(TokenizerError, match="256 single bytes"):
        QwenTokenizer.from_pretrained(short)
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(TokenizerError, match="without gaps"):
        QwenTokenizer.from_pretrained(gap)
    js = tmp_path / "tokenizer.json"
    js.write_text('{"model": {"type": "BPE", "vocab"')
    with pytest.raises(TokenizerError, match="not valid JSON"):
        QwenTokenizer.from_pretrained(js)
    js.write_text("[1, 2]")
    with pytest.raises(TokenizerError, match="not an object"):
        QwenTokenizer.from_pretrained(js)
    js.write_text('{"model": {"type": "Unigram", "vocab": []}}')
    with pytest.raises(TokenizerError, match="not a byte-level BPE"):
        QwenTokenizer.from_pretrained(js)
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(TokenizerError, match="not a GGUF"):
        QwenTokenizer.from_pretrained(fake)
    other = tmp_path / "vocab.txt"
    other.write_text("a\n")
    with pytest.raises(TokenizerError, match="unknown tokenizer file type"):
        QwenTokenizer.from_pretrained(other)


def test_corrupt_saved_folder_and_hf_pair(tmp_path):
    vocab = tiny_vocabulary()
    QwenTokenizer.from_vocabulary(vocab).save_pretrained(tmp_path / "saved", hf_tokenizer_json=False)
    config = tmp_path / "saved" / "tokenizer_config.json"
    config.write_text(json.dumps({"openqwen": {"special_tokens": ["<|endoftext|>"]}}))
    with pytest.raises(TokenizerError, match="special_tokens' must map token text to an id"):
        QwenTokenizer.from_pretrained(tmp_path / "saved")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "vocab.json").write_text(json.dumps({token_bytes_to_str(b): r for b, r in vocab.ranks.items()}))
    (hf / "merges.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(TokenizerError, match="merges.txt is not UTF-8"):
        QwenTokenizer.from_pretrained(hf)
    # a merge whose token comes before an earlier merge's: not representable as tiktoken ranks
    (hf / "merges.txt").write_text("t h\nĠ the\nh e\n")
    with pytest.raises(TokenizerError, match="only vocabularies whose ids follow the merge order"):
        QwenTokenizer.from_pretrained(hf)
    (hf / "merges.txt").write_text("x y\n")
    with pytest.raises(TokenizerError, match="not in the vocabulary"):
        QwenTokenizer.from_pretrained(hf)


def test_gguf_with_another_tokenizer_model_is_refused(tmp_path):
    path = write_gguf(tmp_path / "spm.gguf", ["<unk>", "a"], [2, 1], [], model="llama")
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model is 'llama'; only byte-level BPE"):
        QwenTokenizer.from_pretrained(path)
    path = write_gguf(tmp_path / "pre.gguf", ["a"], [1], [], pre="deepseek-llm")
    with pytest.raises(TokenizerError, match="pre-tokenizer 'deepseek-llm' is not Qwen's"):
        QwenTokenizer.from_pretrained(path)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes((tmp_path / "spm.gguf").read_bytes()[:40])
    with pytest.raises(TokenizerError, match="truncated|corrupt"):
        QwenTokenizer.from_pretrained(truncated)
