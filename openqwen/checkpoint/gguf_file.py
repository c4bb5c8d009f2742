"""The header of a GGUF file (llama.cpp's format): metadata and tensor table, numpy only (no torch).

``gguf.GGUFReader`` builds a numpy view for every string of the embedded tokenizer (about 300
thousand of them in a Qwen file), 38 s on a busy 2-core machine (docs/benchmarks/load.md);
:class:`GGUFFile` walks the same layout with ``struct`` in 0.67 s there and only decodes the strings
it is asked for. Tensor data stays in the memory-mapped file until :meth:`GGUFFile.raw` hands out a
view of its bytes; turning those into weights is :mod:`openqwen.checkpoint.gguf`'s job. The tokenizer
reads GGUF vocabularies through this module too.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CheckpointError

GGUF_MAGIC = b"GGUF"

# GGUF metadata value types (the GGUF spec's numbering).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_SCALAR_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
                 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


def ggml_type_info(ggml_type: int) -> tuple[str, int, int]:
    """(name, block elements, block bytes) of a GGML tensor type, from the gguf package's tables."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415 (numpy only, but not needed to import us)

    try:
        qtype = GGMLQuantizationType(ggml_type)
    except ValueError:
        raise CheckpointError(f"unknown GGML tensor type {ggml_type}; upgrade the gguf package") from None
    block, size = GGML_QUANT_SIZES[qtype]
    return qtype.name, block, size


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor table. ``shape`` is in torch/numpy order (GGUF stores it reversed)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int
    """Absolute byte offset of the data in the file."""
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_info(self.ggml_type)[0]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class StringArray:
    """A metadata array of strings whose decoding is deferred until it is read (tokenizer vocabularies
    are large, and loading weights never needs them). ``heads``: where each string's 8-byte length sits
    in ``buf`` (an ``array('Q')``: 8 bytes per string, where a tuple of offsets cost ~120)."""

    def __init__(self, buf: mmap.mmap, heads: array) -> None:
        self._buf, self._heads = buf, heads

    def __len__(self) -> int:
        return len(self._heads)

    def __getitem__(self, i: int) -> str:
        head = self._heads[i]
        try:
            (n,) = struct.unpack_from("<Q", self._buf, head)
            return self._buf[head + 8 : head + 8 + n].decode("utf-8", errors="surrogateescape")
        except ValueError:  # mmap closed
            raise ValueError("the GGUF file is closed; read its strings (or call .tolist()) before closing it") from None

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]

    def __repr__(self) -> str:
        return f"StringArray(len={len(self)})"


_HEADERS: dict[tuple[str, int, int], tuple] = {}
"""Parsed headers by (path, size, mtime): loading a GGUF opens it two or three times (the precision
check, the weights, the tokenizer), and walking its vocabulary's 300,000 strings cost 0.4 s a time.
The few most recent files only (their string offsets: 8 bytes per string)."""
_HEADERS_KEPT = 4


class GGUFFile:
    """The header of a GGUF file and memory-mapped access to its tensors' bytes.

    >>> f = GGUFFile("model.gguf")                     # doctest: +SKIP
    >>> f.metadata["general.architecture"], f.tensors["token_embd.weight"].type_name   # doctest: +SKIP
    ('qwen2', 'Q5_0')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        with open(self.path, "rb") as fh:
            # Copy-on-write mapping: writable for zero-copy tensor views, never written back to the file.
            self._buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        st = os.stat(self.path)
        key = (str(self.path.resolve()), st.st_size, st.st_mtime_ns)
        if key in _HEADERS:  # the same bytes parsed before: its strings bound to this mapping
            self.version, metadata, tensors, self.alignment = _HEADERS[key]
            self.tensors = dict(tensors)  # this file's own table: a caller's edits stay out of the cache
            self.metadata = {k: StringArray(self._buf, v) if isinstance(v, array) else v for k, v in metadata.items()}
            return
        try:
            self._parse()
            while len(_HEADERS) >= _HEADERS_KEPT:
                _HEADERS.pop(next(iter(_HEADERS)))
            # the offsets only: a StringArray would keep this mapping (and the file's pages) alive
            _HEADERS[key] = (self.version, {k: v._heads if isinstance(v, StringArray) else v
                                            for k, v in self.metadata.items()}, self.tensors, self.alignment)
        except (struct.error, UnicodeDecodeError, IndexError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{self.path} is not a readable GGUF file (truncated or corrupt header: {e})") from e

    # ----------------------------------------------------------------------------------- parsing
    def _parse(self) -> None:
        buf = self._buf
        if buf[:4] != GGUF_MAGIC:
            raise CheckpointError(f"{self.path} is not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
        self._pos = 4
        self.version = self._scalar("<I")
        if self.version not in (2, 3):
            raise CheckpointError(f"{self.path}: GGUF version {self.version} is not supported (2 and 3 are)")
        n_tensors, n_kv = self._scalar("<Q"), self._scalar("<Q")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._scalar("<I"))
        table = []
        for _ in range(n_tensors):
            name = self._string()
            n_dims = self._scalar("<I")
            dims = struct.unpack_from(f"<{n_dims}Q", buf, self._pos)
            self._pos += 8 * n_dims
            ggml_type, rel_offset = self._scalar("<I"), self._scalar("<Q")
            table.append((name, dims, ggml_type, rel_offset))
        self.alignment = int(self.metadata.get("general.alignment", 32))
        data_start = -(-self._pos // self.alignment) * self.alignment
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for name, dims, ggml_type, rel_offset in table:
            type_name, block, size = ggml_type_info(ggml_type)
            numel = int(np.prod(dims, dtype=np.int64))
            if dims and dims[0] % block:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has rows of {dims[0]} elements, not a multiple of the "
                    f"{type_name} block size {block}"
                )
            info = GGUFTensorInfo(name, tuple(int(d) for d in reversed(dims)), ggml_type, data_start + rel_offset,
                                  numel // block * size)
            if info.offset + info.nbytes > len(buf):
                raise CheckpointError(f"{self.path} is truncated: tensor {name!r} runs past the end of the file")
            self.tensors[name] = info

    def _scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += struct.calcsize(fmt)
        return value

    def _string(self) -> str:
        n = self._scalar("<Q")
        s = self._buf[self._pos : self._pos + n].decode("utf-8", errors="surrogateescape")
        self._pos += n
        return s

    def _value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self._string()
        if vtype == _ARRAY:
            item_type, count = self._scalar("<I"), self._scalar("<Q")
            if item_type == _STRING:
                heads = array("Q", bytes(8 * count))
                unpack, pos, buf = struct.unpack_from, self._pos, self._buf
                for i in range(count):
                    heads[i] = pos
                    pos += 8 + unpack("<Q", buf, pos)[0]
                if pos > len(buf):
                    raise CheckpointError(f"{self.path} is truncated: a metadata string array runs past the end")
                self._pos = pos
                return StringArray(buf, heads)
            if item_type in _SCALAR_NUMPY:
                arr = np.frombuffer(self._buf, dtype=_SCALAR_NUMPY[item_type], count=count, offset=self._pos).copy()
                self._pos += arr.nbytes
                return arr
            return [self._value(item_type) for _ in range(count)]  # arrays of arrays (rare)
        if vtype not in _SCALAR_FORMATS:
            raise CheckpointError(f"{self.path}: unknown GGUF metadata value type {vtype}")
        return self._scalar(_SCALAR_FORMATS[vtype])

    # ----------------------------------------------------------------------------------- access
    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a uint8 array sharing memory with the mapped file."""
        if name not in self.tensors:
            raise CheckpointError(f"{self.path} has no tensor {name!r}")
        info = self.tensors[name]
        return np.frombuffer(self._buf, dtype=np.uint8, count=info.nbytes, offset=info.offset)

    def close(self) -> None:
        try:
            self._buf.close()
        except BufferError:
            pass  # a tensor still views the mapping; it is released with the last view

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
