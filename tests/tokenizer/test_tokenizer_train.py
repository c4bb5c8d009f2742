"""Training, extending and measuring vocabularies (openqwen.tokenizer.train, openqwen tokenizer CLI)."""

from __future__ import annotations

import gzip
import json
import random
import sysconfig
from pathlib import Path

import pytest

from openqwen.cli import main as cli_main
from openqwen.tokenizer import QwenTokenizer
from openqwen.tokenizer.train import (compression_stats, extend_tokenizer, group_documents, train_tokenizer)

ZH = ("通义千问是阿里云研发的大语言模型。我们在三万亿个词元上进行了预训练，覆盖中文、英文和代码。模型采用旋转位置编码。"
      "今天天气很好，我们去公园散步吧！床前明月光，疑是地上霜。举头望明月，低头思故乡。春眠不觉晓，处处闻啼鸟。"
      "夜来风雨声，花落知多少。白日依山尽，黄河入海流。欲穷千里目，更上一层楼。学而时习之，不亦说乎？")


def chinese_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    sentences = [s + "。" for s in ZH.replace("！", "。").replace("？", "。").split("。") if s]
    return ["".join(rng.choice(sentences) for _ in range(rng.randint(5, 30))) for _ in range(n)]


def code_docs(skip: int, n: int) -> list[str]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[skip:skip + n]
    assert len(files) == n, "the standard library has fewer modules than this test needs"
    return [f.read_text(encoding="utf-8", errors="replace") for f in files]


def arithmetic_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["\n".join(f"{a} + {b} = {a + b}" for a, b in ((rng.randint(0, 99999), rng.randint(0, 99999))
                                                          for _ in range(40))) for _ in range(n)]


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[str]]:
    return {"code": code_docs(0, 40), "zh": chinese_docs(300, 0), "math": arithmetic_docs(50, 0)}


@pytest.fixture(scope="module")
def mixed(corpus) -> QwenTokenizer:
    texts = [t for docs in corpus.values() for t in docs]
    return train_tokenizer(texts, 4096, show_progress=False)


def test_trained_vocab_size_specials_and_digits(mixed):
    assert mixed.vocab_size == 4096
    assert mixed.num_base_tokens == 4096 - 16
    # specials right after the ordinary ranks, in the release's order
    assert (mixed.eos_id, mixed.im_start_id, mixed.im_end_id) == (4080, 4081, 4082)
    assert mixed.special_tokens["<|extra_12|>"] == 4095
    assert sorted(mixed.mergeable_ranks.values()) == list(range(4080))
    # numbers are split into single digits: no ordinary token mixes a digit with anything else
    digits = set(b"0123456789")
    assert all(len(t) == 1 for t in mixed.mergeable_ranks if digits & set(t))
    assert len(mixed.encode("1234567890")) == 10
    ids = mixed.apply_chat_template([{"role": "user", "content": "12+7?"}])
    assert ids.count(mixed.im_start_id) == 3


def test_trained_tokenizer_roundtrips_through_disk_and_hf(mixed, tmp_path):
    from tokenizers import Tokenizer

    mixed.save_pretrained(tmp_path)
    back = QwenTokenizer.from_pretrained(tmp_path)
    assert back.mergeable_ranks == mixed.mergeable_ranks and back.special_tokens == mixed.special_tokens
    held_out = code_docs(120, 10) + chinese_docs(20, 1) + arithmetic_docs(5, 1) + ["emoji 😀👍🏽 and ünïcödé"]
    ours = back.encode_batch(held_out)
    assert ours == [mixed.encode(t) for t in held_out]
    # an independent implementation (HF tokenizers, merge-priority BPE) reading our tokenizer.json agrees
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert ours == [e.ids for e in hf.encode_batch(held_out, add_special_tokens=False)]
    assert all(back.decode(ids) == t for ids, t in zip(ours, held_out))


def test_a_tokenizer_compresses_its_own_domain(corpus):
    code_tok = train_tokenizer(corpus["code"], 1024, show_progress=False)
    zh_tok = train_tokenizer(corpus["zh"], 1024, show_progress=False)
    held = {"code": code_docs(120, 10), "zh": chinese_docs(30, 2)}
    rows = {(r.tokenizer, r.group): r.bytes_per_token for r in compression_stats({"code": code_tok, "zh": zh_tok}, held)}
    assert rows[("code", "code")] > 1.3 * rows[("zh", "code")]
    assert rows[("zh", "zh")] > 1.3 * rows[("code", "zh")]
    assert rows[("code", "code")] > 2.0  # a bytes-only vocabulary gives 1.0


def test_extend_keeps_ranks_and_learns_new_text(corpus, tmp_path):
    from tokenizers import Tokenizer

    base = train_tokenizer(corpus["code"], 1024, show_progress=False)
    ext = extend_tokenizer(base, chinese_docs(200, 3), 300, show_progress=False)
    assert all(ext.mergeable_ranks[b] == r for b, r in base.mergeable_ranks.items())
    assert ext.num_base_tokens == base.num_base_tokens + 300
    assert ext.eos_id == base.num_base_tokens + 300 and ext.vocab_size == base.vocab_size + 300
    zh = chinese_docs(30, 4)
    bpt = lambda tok: sum(len(t.encode()) for t in zh) / sum(map(len, tok.encode_batch(zh)))  # noqa: E731
    assert bpt(ext) > 1.5 * bpt(base)
    code = code_docs(120, 5)
    assert sum(map(len, ext.encode_batch(code))) <= sum(map(len, base.encode_batch(code)))
    # the extended vocabulary is a consistent BPE: HF tokenizers on its tokenizer.json agrees
    ext.save_pretrained(tmp_path)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sample = zh + code + ["数学 12345 😀"]
    assert ext.encode_batch(sample) == [e.ids for e in hf.encode_batch(sample, add_special_tokens=False)]


def test_training_errors():
    with pytest.raises(ValueError, match="at least the 256 bytes"):
        train_tokenizer(["abc"], 200, show_progress=False)
    with pytest.raises(ValueError, match="no training text"):
        train_tokenizer([], 1024, show_progress=False)
    with pytest.raises(TypeError, match="pathlib"):
        train_tokenizer([b"bytes"], 1024, show_progress=False)


def test_cli_train_and_stats(tmp_path, corpus, capsys):
    data = tmp_path / "corpus"
    data.mkdir()
    with gzip.open(data / "mixed.jsonl.gz", "wt", encoding="utf-8") as f:
        for lang, docs in corpus.items():
            for d in docs:
                f.write(json.dumps({"text": d, "lang": lang, "source": f"src-{lang}"}, ensure_ascii=False) + "\n")
        f.write("{not json\n")  # a bad line is counted and reported, not fatal
    out = tmp_path / "tok"
    assert cli_main(["tokenizer", "train", "--input", str(data), "--vocab-size", "1024", "--out", str(out),
                     "--quiet", "--num-extra", "5"]) == 0
    tok = QwenTokenizer.from_pretrained(out)
    assert tok.vocab_size == 1024 and tok.eos_id == 1024 - 8
    assert "skipped 1 unreadable" in capsys.readouterr().err
    png, js = tmp_path / "fig.png", tmp_path / "rows.json"
    assert cli_main(["tokenizer", "stats", "--tokenizer", f"nano={out}", "--tokenizer", f"bytes={_byte_tokenizer(tmp_path)}",
                     "--input", str(data), "--plot", str(png), "--json", str(js)]) == 0
    table = capsys.readouterr().out
    assert "nano" in table and "zh" in table and "code" in table
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(js.read_text())
    groups = group_documents([data])
    assert set(groups) == {"code", "zh", "math"}
    by = {(r["tokenizer"], r["group"]): r for r in rows}
    for g, docs in groups.items():
        assert by[("nano", g)]["tokens"] == sum(len(tok.encode(d)) for d in docs)
        assert by[("bytes", g)]["bytes_per_token"] == pytest.approx(1.0)  # a bytes-only vocabulary: 1 byte/token
    assert by[("nano", "code")]["bytes_per_token"] > 2.0


def _byte_tokenizer(tmp_path: Path) -> Path:
    tok = QwenTokenizer({bytes([b]): b for b in range(256)}, {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
    return tok.save_pretrained(tmp_path / "bytes")


def test_cli_encode(tmp_path, capsys, mixed):
    mixed.save_pretrained(tmp_path / "t")
    assert cli_main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "x = 42 <|im_end|>"]) == 0
    ids = [int(x) for x in capsys.readouterr().out.split()]
    assert ids == mixed.encode("x = 42 <|im_end|>") and mixed.im_end_id not in ids
    assert cli_main(["tokenizer", "encode", "--tokenizer", str(tmp_path / "t"), "--allow-special", "x<|im_end|>"]) == 0
    assert [int(x) for x in capsys.readouterr().out.split()][-1] == mixed.im_end_id


def tokenizer_verb(argv: list[str]) -> int:
    """Run ``openqwen tokenizer ARGV`` without the top-level dispatcher, so a user error surfaces as
    the exception the library raised (the dispatcher turns it into one line and exit code 2)."""
    import argparse

    from openqwen.tokenizer.cli import add_parser

    parser = argparse.ArgumentParser(prog="openqwen")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer", *argv])
    return args.func(args)


def test_cli_bad_input_says_what_to_fix(tmp_path, mixed):
    """Each mistake raises one error naming the flag or file to fix, before any training starts."""
    text = tmp_path / "a.txt"
    text.write_text("hello world " * 20, encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "e.txt").write_text("", encoding="utf-8")
    mixed.save_pretrained(tmp_path / "tok")
    tok = str(tmp_path / "tok")
    out = str(tmp_path / "out")
    cases = [
        (["train", "--input", str(text), "--out", out], ValueError, "--vocab-size N is required"),
        (["train", "--input", str(tmp_path / "missing"), "--vocab-size", "300", "--out", out],
         FileNotFoundError, "missing does not exist"),
        (["train", "--input", str(empty), "--vocab-size", "300", "--out", out, "--quiet"], ValueError,
         "no training text: the inputs hold no text"),
        (["train", "--input", str(text), "--vocab-size", "100", "--out", out], ValueError, r"use vocab_size >= 272"),
        (["train", "--input", str(text), "--vocab-size", "300", "--out", str(text)], ValueError,
         "a.txt is a file; give a folder"),
        (["train", "--input", str(text), "--vocab-size", "300", "--out", out, "--num-extra", "-1"], ValueError,
         "must be 0 or more"),
        (["train", "--input", str(text), "--vocab-size", "300", "--out", out, "--min-frequency", "0"], ValueError,
         "min_frequency must be 1 or more"),
        (["train", "--input", str(text), "--vocab-size", "300", "--out", out, "--new-tokens", "5"], ValueError,
         "--new-tokens is for --extend"),
        (["train", "--extend", tok, "--input", str(text), "--new-tokens", "5", "--vocab-size", "300", "--out", out],
         ValueError, "--vocab-size is for training from bytes"),
        (["train", "--extend", tok, "--input", str(text), "--new-tokens", "5", "--num-extra", "2", "--out", out],
         ValueError, "--num-extra is for training from bytes"),
        (["train", "--extend", tok, "--input", str(empty), "--new-tokens", "5", "--out", out], ValueError,
         "no training text"),
        (["train", "--extend", str(tmp_path / "nope"), "--input", str(text), "--new-tokens", "5", "--out", out],
         ValueError, "no tokenizer at .*nope: the path does not exist"),
        (["encode", "--tokenizer", str(text), "hi"], ValueError, "unknown tokenizer file type"),
        (["encode", "--tokenizer", tok, "--file", str(tmp_path / "nope.txt")], FileNotFoundError,
         "--file .*nope.txt does not exist"),
        (["encode", "--tokenizer", tok, "--file", str(text), "hi"], ValueError, "not both"),
        (["encode", "--tokenizer", tok, "--chat", "--allow-special", "hi"], ValueError, "does not apply to --chat"),
        (["stats", "--tokenizer", "x=", "--input", str(text)], ValueError, "names no path"),
        (["stats", "--tokenizer", f"a={tok}", "--tokenizer", f"a={tok}", "--input", str(text)], ValueError,
         "two tokenizers are named 'a'"),
        (["stats", "--tokenizer", tok, "--input", str(empty)], ValueError, "no text in these files"),
    ]
    for argv, error, message in cases:
        with pytest.raises(error, match=message):
            tokenizer_verb(argv)
    assert not Path(out).exists()
    binary = tmp_path / "b.txt"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="b.txt is not UTF-8 text"):
        tokenizer_verb(["encode", "--tokenizer", tok, "--file", str(binary)])


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    """Through the top-level dispatcher: one line on stderr, exit status 2, nothing on stdout."""
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert cli_main(["tokenizer", "train", "--input", str(empty), "--vocab-size", "300",
                     "--out", str(tmp_path / "out"), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "openqwen tokenizer: error: no training text: the inputs hold no text; give files with text in them "
        "(.txt/.md/.py, or .jsonl[.gz] with a 'text' field)"]
    assert cli_main(["tokenizer", "train", "--input", str(tmp_path / "nope"), "--vocab-size", "300",
                     "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.splitlines() == [f"openqwen tokenizer: error: input {tmp_path / 'nope'} does not exist"]


@pytest.mark.slow
def test_extend_the_official_vocabulary(artifact, tmp_path):
    """Grow the real 151,643-token Qwen vocabulary; old ranks stay, HF tokenizers agrees on the result."""
    from tokenizers import Tokenizer

    base = QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))
    new_text = ["ⓠⓦⓔⓝ ⓣⓞⓚⓔⓝ ⓘⓩⓔⓡ " * 50 + "ꦲꦤꦕꦫꦏ ꦢꦠꦱꦮꦭ " * 40 + "ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ " * 30]
    ext = extend_tokenizer(base, new_text, 20, show_progress=False)
    assert all(ext.mergeable_ranks[b] == r for b, r in base.mergeable_ranks.items())
    assert ext.num_base_tokens == 151643 + 20 and ext.eos_id == 151663 and ext.im_end_id == 151665
    assert len(ext.encode(new_text[0])) < 0.7 * len(base.encode(new_text[0]))
    ext.save_pretrained(tmp_path)
    hf = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sample = new_text + code_docs(120, 3) + chinese_docs(5, 9)
    assert ext.encode_batch(sample) == [e.ids for e in hf.encode_batch(sample, add_special_tokens=False)]


def test_cli_extend(tmp_path, mixed):
    mixed.save_pretrained(tmp_path / "base")
    rng = random.Random(0)
    words = "안녕하세요 세계 한국어 문장입니다 Привет как дела мягких французских булок".split()
    new_text = "\n".join(" ".join(rng.choice(words) for _ in range(30)) for _ in range(100))
    (tmp_path / "zh.txt").write_text(new_text, encoding="utf-8")
    assert cli_main(["tokenizer", "train", "--extend", str(tmp_path / "base"), "--input", str(tmp_path / "zh.txt"),
                     "--new-tokens", "50", "--out", str(tmp_path / "ext"), "--quiet"]) == 0
    ext = QwenTokenizer.from_pretrained(tmp_path / "ext")
    assert all(ext.mergeable_ranks[b] == r for b, r in mixed.mergeable_ranks.items())
    assert ext.num_base_tokens == mixed.num_base_tokens + 50
    assert list(ext.special_tokens) == list(mixed.special_tokens) and ext.eos_id == ext.num_base_tokens
    assert len(ext.encode(new_text)) < 0.5 * len(mixed.encode(new_text))
    with pytest.raises(ValueError, match="--extend needs --new-tokens N"):
        tokenizer_verb(["train", "--extend", str(tmp_path / "base"), "--input", str(tmp_path / "zh.txt"),
                        "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
