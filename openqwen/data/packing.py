"""Tokenise documents and pack them into fixed-length sequences in binary shards.

The report's pretraining recipe: documents are shuffled, concatenated (each followed by
``<|endoftext|>``) and cut into sequences of ``seq_len`` tokens. :func:`pack_documents` does that
once and writes::

    DIR/index.json          seq_len, vocab_size, eos_id, dtype, counts, shards, config
    DIR/tokens-00000.bin    raw little-endian uint16/uint32 tokens, num_sequences x seq_len
    ...

:class:`PackedDataset` memory-maps the shards: ``ds[i]`` is sequence ``i`` as int64. The order
in which training visits sequences is :func:`epoch_order` ``(num_sequences, epoch, seed)``: a
permutation that depends only on its arguments, so the batch at any step of any epoch can be
recomputed after a restart without replaying the data loader (as in OLMo).

The last sequence is padded with ``eos_id`` so that every token of every document appears exactly
once per epoch; ``index.json`` records ``num_tokens`` (real tokens, separators included) so a
trainer can tell padding (flat positions >= ``num_tokens``) from data.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Protocol

import numpy as np

from .io import BadLine, StageStats, atomic_write_json, list_input_files, read_documents

INDEX = "index.json"
FORMAT = "openqwen-packed-v1"


class Encoder(Protocol):
    """What packing needs from a tokenizer: ``encode(text) -> ids`` and the separator id."""

    eos_id: int

    def encode(self, text: str) -> list[int]: ...


def epoch_order(num_sequences: int, epoch: int, seed: int) -> np.ndarray:
    """The order (a permutation of ``range(num_sequences)``) in which epoch ``epoch`` visits sequences.

    A pure function of its arguments: the sequence seen at global step ``s`` with batch size ``B``
    is ``epoch_order(n, s * B // n, seed)[(s * B) % n]``, computable after a restart.
    """
    if num_sequences < 0 or epoch < 0:
        raise ValueError("num_sequences and epoch must be >= 0")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]))
    return rng.permutation(num_sequences)


def _tokenizer_fingerprint(tokenizer: Encoder) -> dict[str, Any]:
    name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    probe = tokenizer.encode("Hello, world! 你好，世界。 def f(x): return x + 1")
    return {
        "name": str(name),
        "eos_id": int(tokenizer.eos_id),
        "vocab_size": getattr(tokenizer, "vocab_size", None),
        # ids of a fixed probe text: two different tokenizers with the same name still differ here
        "probe": hashlib.sha1(np.asarray(probe, np.int64).tobytes()).hexdigest()[:16],
    }


def _iter_input_texts(documents: Any, stats: StageStats) -> tuple[list[str], list[str]]:
    """Collect the texts to pack and the names of their input files (bad lines are counted)."""
    if isinstance(documents, (str, Path)) or (
        isinstance(documents, (list, tuple)) and documents and isinstance(documents[0], Path)
    ):
        files = list_input_files(documents)
        texts: list[str] = []
        for f in files:
            for doc in read_documents(f):
                if isinstance(doc, BadLine):
                    stats.error(doc)
                else:
                    texts.append(doc["text"])
        return texts, [str(f) for f in files]
    texts = []
    for t in documents:
        if not isinstance(t, str):
            raise TypeError(f"pack_documents takes strings or paths, got {type(t).__name__}")
        texts.append(t)
    return texts, ["<iterable>"]


def pack_documents(
    documents: str | Path | list[Path] | Iterable[str],
    tokenizer: Encoder,
    out_dir: str | Path,
    seq_len: int = 512,
    seed: int = 0,
    shuffle: bool = True,
    shard_bytes: int = 64 << 20,
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenise ``documents`` and write packed shards to ``out_dir``; returns the index dict.

    ``documents``: a folder/file of stage output (JSONL shards, text files) or an iterable of strings.
    ``tokenizer``: anything with ``encode(text) -> list[int]`` and ``eos_id`` (``QwenTokenizer``).
    ``seq_len``: tokens per sequence. ``seed``: document shuffle seed (also the default seed of
    :meth:`PackedDataset.epoch_order`). ``shard_bytes``: target size of one ``.bin`` shard.

    Empty documents are skipped (counted as removed ``empty``). Re-running with the same inputs and
    settings on a finished folder returns its index without work; other settings raise an error.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    out = Path(out_dir)
    stats = StageStats()
    texts, inputs = _iter_input_texts(documents, stats)
    fingerprint = _tokenizer_fingerprint(tokenizer)
    content = hashlib.sha1()
    for t in texts:
        content.update(hashlib.sha1(t.encode("utf-8", "surrogatepass")).digest())
    config = {"seq_len": seq_len, "seed": seed, "shuffle": shuffle, "tokenizer": fingerprint,
              "content_sha1": content.hexdigest()}
    index_path = out / INDEX
    if index_path.exists():
        old = json.loads(index_path.read_text())
        if old.get("config") == config:
            return old  # finished before with the same inputs: nothing to do
        raise FileExistsError(
            f"{out} already holds packed data made from other inputs or settings; "
            "pass a new --out folder or delete that one"
        )

    eos = int(tokenizer.eos_id)
    arrays: list[np.ndarray] = []
    max_id = eos
    iterator: Iterable[str] = texts
    if progress:
        from tqdm import tqdm

        iterator = tqdm(texts, desc="tokenise", unit="doc", mininterval=1.0)
    for text in iterator:
        stats.add_in(text)
        if not text:
            stats.remove("empty")
            continue
        ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
        if ids.size == 0:
            stats.remove("empty")
            continue
        if ids.min() < 0:
            raise ValueError("tokenizer returned a negative id")
        max_id = max(max_id, int(ids.max()))
        arrays.append(ids)
        stats.keep(text)

    vocab_size = getattr(tokenizer, "vocab_size", None) or max_id + 1
    if max_id >= vocab_size:
        raise ValueError(f"token id {max_id} >= tokenizer vocab_size {vocab_size}")
    dtype = np.uint16 if vocab_size <= 1 << 16 else np.uint32
    order = np.random.default_rng(seed).permutation(len(arrays)) if shuffle else np.arange(len(arrays))
    sep = np.array([eos], dtype=dtype)
    pieces: list[np.ndarray] = []
    for i in order:
        pieces.append(arrays[i].astype(dtype))
        pieces.append(sep)
    flat = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
    num_tokens = int(flat.size)
    num_sequences = -(-num_tokens // seq_len)
    padding = num_sequences * seq_len - num_tokens
    if padding:
        flat = np.concatenate([flat, np.full(padding, eos, dtype)])

    out.mkdir(parents=True, exist_ok=True)
    itemsize = np.dtype(dtype).itemsize
    per_shard = max(1, shard_bytes // (seq_len * itemsize))
    shards = []
    for k, start in enumerate(range(0, num_sequences, per_shard)):
        n = min(per_shard, num_sequences - start)
        name = f"tokens-{k:05d}.bin"
        tmp = out / f".{name}.tmp{os.getpid()}"
        flat[start * seq_len : (start + n) * seq_len].astype("<" + np.dtype(dtype).str[1:]).tofile(tmp)
        os.replace(tmp, out / name)
        shards.append({"file": name, "num_sequences": n})

    index = {
        "format": FORMAT,
        "seq_len": seq_len,
        "vocab_size": int(vocab_size),
        "eos_id": eos,
        "dtype": np.dtype(dtype).name,
        "num_sequences": num_sequences,
        "num_tokens": num_tokens,
        "num_padding": padding,
        "num_documents": stats.kept,
        "seed": seed,
        "shards": shards,
        "stats": stats.to_dict(),
        "inputs": inputs,
        "config": config,
    }
    atomic_write_json(index_path, index)  # written last: its presence means "finished"
    return index


class PackedDataset:
    """Read-only view of a folder written by :func:`pack_documents`.

    ``len(ds)`` sequences; ``ds[i]`` is an int64 array of ``seq_len`` token ids. Shards are
    memory-mapped, so opening is instant and memory use stays flat whatever the corpus size.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / INDEX
        if not index_path.exists():
            raise FileNotFoundError(
                f"{index_path} not found: pack a corpus first (openqwen data pack --help)"
            )
        self.index: dict[str, Any] = json.loads(index_path.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index_path}: unknown format {self.index.get('format')!r}")
        self.seq_len: int = int(self.index["seq_len"])
        self.vocab_size: int = int(self.index["vocab_size"])
        self.eos_id: int = int(self.index["eos_id"])
        self.num_tokens: int = int(self.index["num_tokens"])
        self.seed: int = int(self.index["seed"])
        dtype = np.dtype(self.index["dtype"]).newbyteorder("<")
        self._shards: list[np.ndarray] = []
        starts = [0]
        for shard in self.index["shards"]:
            n = int(shard["num_sequences"])
            mm = np.memmap(self.path / shard["file"], dtype=dtype, mode="r", shape=(n, self.seq_len))
            self._shards.append(mm)
            starts.append(starts[-1] + n)
        self._starts = np.asarray(starts, dtype=np.int64)
        if starts[-1] != int(self.index["num_sequences"]):
            raise ValueError(f"{index_path}: shard sizes do not add up to num_sequences")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return np.asarray(self._shards[k][i - self._starts[k]], dtype=np.int64)

    def epoch_order(self, epoch: int, seed: int | None = None) -> np.ndarray:
        """:func:`epoch_order` for this dataset (seed defaults to the packing seed)."""
        return epoch_order(len(self), epoch, self.seed if seed is None else seed)

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.path)!r}, sequences={len(self)}, seq_len={self.seq_len}, "
                f"tokens={self.num_tokens})")
