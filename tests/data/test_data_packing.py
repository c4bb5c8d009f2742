"""Packing: deterministic for a seed, every document token exactly once per epoch, recomputable order."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from openqwen.data.packing import PackedDataset, epoch_order, pack_documents


class ByteTokenizer:
    """UTF-8 bytes as ids, 256 = end of text: independent of the project tokenizer."""

    eos_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def _docs(n: int = 60, seed: int = 1) -> list[str]:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "月光", "霜", "x = 1", "def f():"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))) + f" doc{i}" for i in range(n)]


def _split_docs(ds: PackedDataset) -> list[bytes]:
    flat = np.concatenate([ds[i] for i in range(len(ds))])[: ds.num_tokens]
    assert flat[-1] == ds.eos_id
    out, cur = [], []
    for t in flat.tolist():
        if t == ds.eos_id:
            out.append(bytes(cur))
            cur = []
        else:
            cur.append(t)
    return out


def test_every_token_once_and_padding(tmp_path):
    docs = _docs()
    index = pack_documents(docs, ByteTokenizer(), tmp_path / "p", seq_len=32, seed=3, progress=False,
                           shard_bytes=32 * 2 * 5)  # 5 sequences per shard: several shards
    ds = PackedDataset(tmp_path / "p")
    assert len(index["shards"]) > 1
    assert ds.seq_len == 32 and ds.vocab_size == 257 and len(ds) == index["num_sequences"]
    total = sum(len(d.encode()) + 1 for d in docs)
    assert ds.num_tokens == total and len(ds) == -(-total // 32)
    for i in range(len(ds)):
        x = ds[i]
        assert x.dtype == np.int64 and x.shape == (32,)
    # the documents come back exactly once each (as a multiset), in a shuffled order
    got = _split_docs(ds)
    assert sorted(got) == sorted(d.encode() for d in docs)
    assert got != [d.encode() for d in docs]
    # padding after num_tokens is eos only
    tail = ds[len(ds) - 1][ds.num_tokens - (len(ds) - 1) * 32 :]
    assert (tail == 256).all() and index["num_padding"] == len(tail)
    assert index["stats"]["balanced"] and index["num_documents"] == len(docs)


def test_deterministic_for_seed_and_rerun_is_noop(tmp_path):
    docs = _docs()
    a = pack_documents(docs, ByteTokenizer(), tmp_path / "a", seq_len=16, seed=7, progress=False)
    b = pack_documents(docs, ByteTokenizer(), tmp_path / "b", seq_len=16, seed=7, progress=False)
    c = pack_documents(docs, ByteTokenizer(), tmp_path / "c", seq_len=16, seed=8, progress=False)
    read = lambda d: (tmp_path / d / "tokens-00000.bin").read_bytes()  # noqa: E731
    assert read("a") == read("b") and read("a") != read("c")
    assert a["num_tokens"] == c["num_tokens"]
    mtime = (tmp_path / "a" / "tokens-00000.bin").stat().st_mtime_ns
    again = pack_documents(docs, ByteTokenizer(), tmp_path / "a", seq_len=16, seed=7, progress=False)
    assert again == a and (tmp_path / "a" / "tokens-00000.bin").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="new --out"):
        pack_documents(docs[:-1], ByteTokenizer(), tmp_path / "a", seq_len=16, seed=7, progress=False)


def test_epoch_order_recomputable():
    o = epoch_order(1000, 3, seed=5)
    assert sorted(o.tolist()) == list(range(1000))
    assert np.array_equal(o, epoch_order(1000, 3, seed=5))
    assert not np.array_equal(o, epoch_order(1000, 4, seed=5))
    assert not np.array_equal(o, epoch_order(1000, 3, seed=6))


def test_pack_from_stage_folder_counts_bad_lines(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    lines = [json.dumps({"text": "hello world"}), "{not json", json.dumps({"text": ""}),
             json.dumps({"txt": "no text field"}), json.dumps({"text": "second doc"})]
    with gzip.open(src / "shard-00000.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    index = pack_documents(src, ByteTokenizer(), tmp_path / "p", seq_len=8, progress=False)
    s = index["stats"]
    assert s["docs_in"] == 5 and s["kept"] == 2 and s["removed"] == {"empty": 1} and s["errors"] == 2
    assert {(e["line"], e["error"].split(":")[0]) for e in s["error_lines"]} == {
        (2, "invalid JSON"), (4, "no string field 'text'")}
    assert sorted(_split_docs(PackedDataset(tmp_path / "p"))) == [b"hello world", b"second doc"]


def test_real_qwen_tokenizer_roundtrip(tmp_path, artifact):
    from openqwen.tokenizer import QwenTokenizer

    tok = QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))
    docs = ["Shall I compare thee to a summer's day?", "床前明月光，疑是地上霜。", "def f(x):\n    return x + 1\n"]
    pack_documents(docs, tok, tmp_path / "p", seq_len=8, shuffle=False, progress=False)
    ds = PackedDataset(tmp_path / "p")
    assert ds.eos_id == 151643 and ds.vocab_size == tok.vocab_size
    flat = np.concatenate([ds[i] for i in range(len(ds))])[: ds.num_tokens].tolist()
    assert tok.decode(flat) == "<|endoftext|>".join(docs) + "<|endoftext|>"


def test_pack_cli_with_the_qwen_tokenizer(tmp_path, artifact):
    from openqwen.cli import main

    tok = artifact("qwen-tiktoken")
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"Document number {i}: 你好 {i * i}"}) for i in range(50)) + "\n")
    assert main(["data", "pack", "--in", str(src), "--out", str(tmp_path / "p"), "--tokenizer", str(tok),
                 "--seq-len", "16"]) == 0
    ds = PackedDataset(tmp_path / "p")
    assert ds.seq_len == 16 and ds.eos_id == 151643 and ds.vocab_size > 151643
    flat = np.concatenate([ds[i] for i in range(len(ds))])[: ds.num_tokens]
    assert (flat == 151643).sum() == 50
