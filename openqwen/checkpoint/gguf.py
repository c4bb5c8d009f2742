"""Load ``.gguf`` files (llama.cpp's format) of the ``qwen2`` architecture (Qwen1.5 / 2 / 2.5) and of
the first generation's ``qwen`` architecture into :class:`openqwen.Qwen`.

Three parts:

* :class:`GGUFFile` reads the header (metadata and tensor table) and maps the tensor data without
  copying it. ``gguf.GGUFReader`` builds a numpy view for every string of the embedded tokenizer
  (about 300 thousand of them in a Qwen file), which takes ~30 s on a small CPU; this reader walks the
  same layout with ``struct`` in under a second and only decodes the strings it is asked for.
* :func:`dequantize` turns raw GGML blocks into float32 with whole-tensor torch operations
  (F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K and also Q4_0, Q4_1, Q5_1, Q5_K). Other block types fall
  back to ``gguf.quants.dequantize`` (vectorised numpy, slower). The results equal the ``gguf``
  package's reference dequantisers bit for bit; ``tests/test_checkpoint.py`` checks that.
* :func:`load_gguf` maps the metadata to a :class:`~openqwen.config.QwenConfig` and the tensors to the
  model. llama.cpp's converter stores qwen2 and qwen Q/K rows unpermuted (it permutes only
  LLaMA-family checkpoints), so the projections map across as they are; the real-weights test
  against transformers' own GGUF loading confirms it for qwen2. For qwen it keeps the fused
  ``attn_qkv``, names ``mlp.w2`` ``ffn_gate`` and ``mlp.w1`` ``ffn_up``, and stores the config's
  doubled FFN size as ``feed_forward_length``.

The model is always dequantised: openqwen runs dense weights (float32 by default, or ``dtype``).
"""

from __future__ import annotations

import mmap
import struct
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import CheckpointError, build_model, resolve_dtype
from .config import QwenConfig
from .model import Qwen

GGUF_MAGIC = b"GGUF"
SUPPORTED_ARCHITECTURES = ("qwen2", "qwen")
"""qwen2: Qwen1.5 / Qwen2 / Qwen2.5. qwen: the first generation (fused ``attn_qkv``), as converted by llama.cpp."""

# GGUF metadata value types (the GGUF spec's numbering).
_SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                   12: "<d"}
_SCALAR_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
                 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9

# GGML tensor type ids (ggml.h numbering) of the types with a fast path below; names and block sizes
# of every type come from the gguf package.
_F32, _F16, _Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0, _Q4_K, _Q5_K, _Q6_K, _BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
QK_K = 256


def _type_info(ggml_type: int) -> tuple[str, int, int]:
    """(name, block elements, block bytes) of a GGML tensor type."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415

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
        return _type_info(self.ggml_type)[0]

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class StringArray:
    """A metadata array of strings whose decoding is deferred until it is read (tokenizer vocabularies
    are large, and loading weights never needs them)."""

    def __init__(self, buf: mmap.mmap, spans: list[tuple[int, int]]) -> None:
        self._buf, self._spans = buf, spans

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, i: int) -> str:
        start, end = self._spans[i]
        try:
            return self._buf[start:end].decode("utf-8", errors="surrogateescape")
        except ValueError:  # mmap closed
            raise ValueError("the GGUF file is closed; read its strings (or call .tolist()) before closing it") from None

    def tolist(self) -> list[str]:
        return [self[i] for i in range(len(self))]

    def __repr__(self) -> str:
        return f"StringArray(len={len(self)})"


class GGUFFile:
    """The header of a GGUF file and memory-mapped access to its tensors.

    >>> f = GGUFFile("model.gguf")                     # doctest: +SKIP
    >>> f.metadata["general.architecture"], f.tensors["token_embd.weight"].type_name   # doctest: +SKIP
    ('qwen2', 'Q5_0')
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no GGUF file at {self.path}")
        with open(self.path, "rb") as fh:
            # Copy-on-write mapping: writable for torch.frombuffer, never written back to the file.
            self._buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            self._parse()
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
            _, block, size = _type_info(ggml_type)
            numel = int(np.prod(dims, dtype=np.int64))
            if dims and dims[0] % block:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has rows of {dims[0]} elements, not a multiple of the "
                    f"{_type_info(ggml_type)[0]} block size {block}"
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
                spans = []
                unpack, pos, buf = struct.unpack_from, self._pos, self._buf
                for _ in range(count):
                    (n,) = unpack("<Q", buf, pos)
                    spans.append((pos + 8, pos + 8 + n))
                    pos += 8 + n
                self._pos = pos
                return StringArray(buf, spans)
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

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's bytes as a uint8 tensor sharing memory with the mapped file."""
        info = self.tensors[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-length / alignment warnings of frombuffer
            return torch.frombuffer(self._buf, dtype=torch.uint8, count=info.nbytes, offset=info.offset)

    def tensor(self, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
        """The tensor dequantised to float32 (a new tensor, or written into ``out``)."""
        if name not in self.tensors:
            raise CheckpointError(f"{self.path} has no tensor {name!r}")
        info = self.tensors[name]
        return dequantize(self.raw(name), info.ggml_type, info.shape, out=out)

    def close(self) -> None:
        try:
            self._buf.close()
        except BufferError:
            pass  # a tensor still views the mapping; it is released with the last view

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------- dequantising
def _f16(b: torch.Tensor) -> torch.Tensor:
    """Little-endian float16 stored as 2 bytes per row of ``b`` [n, 2] -> float32 [n, 1]."""
    return b.contiguous().view(torch.float16).float()


_LOW_NIBBLES = 0x0F0F0F0F0F0F0F0F
# byte -> 8 bytes packed in an int64, byte j = (bit j of the input) << 4: the fifth bit of Q5 codes
_HIGH_BIT_LUT = torch.from_numpy(
    (((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.uint8) << 4).copy().view(np.int64).reshape(256)
)


def _unpack_nibbles(qs: torch.Tensor) -> torch.Tensor:
    """Bytes [n, ..., k] -> uint8 codes [n, ..., 2k]: the k low nibbles, then the k high nibbles (GGML's
    order). Works on 8 bytes at a time through int64 lanes."""
    k = qs.shape[-1]
    lanes = qs.contiguous().view(torch.int64)
    out = torch.empty((*qs.shape[:-1], k // 4), dtype=torch.int64, device=qs.device)
    torch.bitwise_and(lanes, _LOW_NIBBLES, out=out[..., : k // 8])
    hi = out[..., k // 8 :]
    torch.bitwise_right_shift(lanes, 4, out=hi)
    hi &= _LOW_NIBBLES  # also clears the sign bits that the arithmetic shift brought in
    return out.view(torch.uint8)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """Bytes [n, k] -> uint8 [n, 8k] holding bit j of the input bytes at bit 4 (little-endian order)."""
    idx = qh.contiguous().long().view(-1)  # index_select on a flat index: the fastest gather on CPU
    return torch.index_select(_HIGH_BIT_LUT.to(qh.device), 0, idx).view(torch.uint8).reshape(qh.shape[0], -1)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte scale field of Q4_K/Q5_K: eight 6-bit scales and eight 6-bit mins."""
    s = s.reshape(-1, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    scales = torch.cat([d & 63, (md & 15) | ((d >> 2) & 48)], dim=1)
    mins = torch.cat([m & 63, (md >> 4) | ((m >> 2) & 48)], dim=1)
    return scales.float(), mins.float()


def _apply(codes: torch.Tensor, out: torch.Tensor, groups: int, offset: float, scale: torch.Tensor,
           minimum: torch.Tensor | None = None) -> None:
    """out = (codes - offset) * scale [- minimum], per group of each block.

    Codes stay unsigned (uint8 -> float32 is a vectorised conversion in torch, int8 -> float32 is not);
    subtracting the offset in float32 is exact, so the single rounding of the product matches the
    gguf package's reference bit for bit.
    """
    n = out.shape[0]
    o = out.view(n, groups, -1)
    o.copy_(codes.reshape(n, groups, -1))
    if offset:
        o -= offset
    o *= scale.reshape(n, groups, 1)
    if minimum is not None:
        o -= minimum.reshape(n, groups, 1)


# Each block dequantiser maps raw blocks [n, bytes] into out [n, elements] (float32), with the same
# operation order (hence the same rounding) as the gguf package's reference code.
def _deq_q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    _apply(b[:, 2:] ^ 0x80, out, 1, 128.0, _f16(b[:, :2]))  # int8 q + 128 as uint8 (flip the sign bit)


def _deq_q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    _apply(_unpack_nibbles(b[:, 2:]), out, 1, 8.0, _f16(b[:, :2]))


def _deq_q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    _apply(_unpack_nibbles(b[:, 4:]), out, 1, 0.0, _f16(b[:, :2]))
    out += _f16(b[:, 2:4])


def _deq_q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _unpack_nibbles(b[:, 6:])
    q |= _high_bits(b[:, 2:6])
    _apply(q, out, 1, 16.0, _f16(b[:, :2]))


def _deq_q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    q = _unpack_nibbles(b[:, 8:])
    q |= _high_bits(b[:, 4:8])
    _apply(q, out, 1, 0.0, _f16(b[:, :2]))
    out += _f16(b[:, 2:4])


def _deq_q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    # 4 chunks of 32 bytes; low nibbles are sub-block 2c, high nibbles sub-block 2c+1
    q = _unpack_nibbles(b[:, 16:].reshape(n, 4, 32))
    _apply(q, out, 8, 0.0, _f16(b[:, :2]) * sc, _f16(b[:, 2:4]) * mn)


def _deq_q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    sc, mn = _k_scales(b[:, 4:16])
    q = _unpack_nibbles(b[:, 48:].reshape(n, 4, 32)).view(n, 8, 32)
    # the fifth bit of value l of sub-block j is bit j of qh byte l
    q |= _high_bits(b[:, 16:48]).view(n, 32, 8).transpose(1, 2)
    _apply(q, out, 8, 0.0, _f16(b[:, :2]) * sc, _f16(b[:, 2:4]) * mn)


_Q6_SHIFTS = torch.tensor([0, 2, 4, 6], dtype=torch.uint8).reshape(1, 1, 4, 1)


def _deq_q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    n = b.shape[0]
    # two halves of 128 values: 64 ql bytes each (low nibbles, then high nibbles) and 32 qh bytes each
    # holding bits 4-5 of four runs of 32 values
    q = _unpack_nibbles(b[:, :128].reshape(n, 2, 64)).view(n, 8, 32)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> _Q6_SHIFTS.to(b.device)
    qh &= 3
    qh <<= 4
    q |= qh.view(n, 8, 32)
    scales = b[:, 192:208].view(torch.int8).float() * _f16(b[:, 208:210])  # one per 16 values
    _apply(q, out, 16, 32.0, scales)


_BLOCK_DEQUANTISERS = {_Q8_0: _deq_q8_0, _Q4_0: _deq_q4_0, _Q4_1: _deq_q4_1, _Q5_0: _deq_q5_0, _Q5_1: _deq_q5_1,
                       _Q4_K: _deq_q4_k, _Q5_K: _deq_q5_k, _Q6_K: _deq_q6_k}

# Blocks per slice: keeps the byte temporaries (one byte per element) small enough to stay in cache.
_CHUNK_BLOCKS = 1 << 14


def dequantize(raw: torch.Tensor | np.ndarray, ggml_type: int, shape: tuple[int, ...],
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Raw GGML bytes -> float32 tensor of ``shape`` (torch order), optionally written into ``out``.

    Whole tensors are processed in large vectorised slices; the fast path covers the types of
    common llama.cpp files, anything else goes through ``gguf.quants.dequantize``.
    """
    if isinstance(raw, np.ndarray):
        raw = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(-1))
    raw = raw.reshape(-1)
    numel = int(np.prod(shape, dtype=np.int64))
    name, block, size = _type_info(ggml_type)
    if raw.numel() != numel // block * size or numel % block:
        raise CheckpointError(f"{name} data of {raw.numel()} bytes does not hold a tensor of shape {tuple(shape)}")
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=raw.device)
    elif (tuple(out.shape) != tuple(shape) or out.dtype != torch.float32 or not out.is_contiguous()
          or out.device != raw.device):
        raise ValueError(f"out must be a contiguous float32 tensor of shape {tuple(shape)} on {raw.device}")
    flat = out.view(-1)
    if ggml_type == _F32:
        flat.copy_(raw.view(torch.float32))
    elif ggml_type == _F16:
        flat.copy_(raw.view(torch.float16))
    elif ggml_type == _BF16:
        flat.copy_(raw.view(torch.bfloat16))
    elif ggml_type in _BLOCK_DEQUANTISERS:
        fn = _BLOCK_DEQUANTISERS[ggml_type]
        blocks = raw.view(-1, size)
        values = flat.view(-1, block)
        for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
            fn(blocks[start : start + _CHUNK_BLOCKS], values[start : start + _CHUNK_BLOCKS])
    else:
        from gguf import GGMLQuantizationType, quants  # noqa: PLC0415

        rows = raw.cpu().numpy().reshape(-1, shape[-1] // block * size)  # numpy fallback runs on the CPU
        flat.copy_(torch.from_numpy(quants.dequantize(rows, GGMLQuantizationType(ggml_type)).reshape(-1)))
    return out


# ------------------------------------------------------------------------------------- mapping
def config_from_gguf(f: GGUFFile) -> QwenConfig:
    """QwenConfig from the metadata of a qwen2 / qwen GGUF file (vocab size from ``token_embd``)."""
    arch = f.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{f.path} holds architecture {arch!r}; openqwen reads GGUF files of architecture "
            f"{' and '.join(repr(a) for a in SUPPORTED_ARCHITECTURES)} (Qwen1.5 / 2 / 2.5, and the first generation)"
        )
    meta = f.metadata

    def get(key: str, default: Any = None) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            if default is None:
                raise CheckpointError(f"{f.path} lacks the metadata field {full!r}")
            return default
        return meta[full]

    if "token_embd.weight" not in f.tensors:
        raise CheckpointError(f"{f.path} lacks tensor 'token_embd.weight'")
    if f"{arch}.rope.scaling.type" in meta and meta[f"{arch}.rope.scaling.type"] not in ("none", ""):
        warnings.warn(
            f"{f.path} asks for RoPE scaling {meta[f'{arch}.rope.scaling.type']!r}, which openqwen does not apply; "
            "results stay exact up to the original context length", stacklevel=3,
        )
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    ffn = int(get("feed_forward_length"))
    if arch == "qwen":
        # llama.cpp stores the first generation's config value, twice the SwiGLU branch width; the
        # gate tensor has the real width.
        if "blk.0.ffn_gate.weight" not in f.tensors:
            raise CheckpointError(f"{f.path} lacks tensor 'blk.0.ffn_gate.weight'")
        width = f.tensors["blk.0.ffn_gate.weight"].shape[0]
        if ffn not in (width, 2 * width):
            raise CheckpointError(
                f"{f.path}: {arch}.feed_forward_length {ffn} fits neither the gate width {width} nor twice it"
            )
        ffn = width
    context = int(get("context_length", 32768))
    return QwenConfig(
        vocab_size=f.tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", hidden // heads)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
        qkv_bias="blk.0.attn_q.bias" in f.tensors or "blk.0.attn_qkv.bias" in f.tensors,
        tie_word_embeddings="output.weight" not in f.tensors,
        max_position_embeddings=context,
        seq_length=context,
    )


def _layout(c: QwenConfig, fused_qkv: bool = False) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
    """Model parameter -> the GGUF tensors (in order, concatenated along dim 0) and their shapes."""
    d, q, kv, ffn = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim, \
        c.intermediate_size
    plan: dict[str, list[tuple[str, tuple[int, ...]]]] = {
        "embed_tokens.weight": [("token_embd.weight", (c.vocab_size, d))],
        "norm.weight": [("output_norm.weight", (d,))],
    }
    if not c.tie_word_embeddings:
        plan["lm_head.weight"] = [("output.weight", (c.vocab_size, d))]
    for i in range(c.num_hidden_layers):
        g, m = f"blk.{i}.", f"layers.{i}."
        if fused_qkv:  # first generation: one tensor, rows Q | K | V, exactly the model's layout
            plan[m + "self_attn.qkv_proj.weight"] = [(g + "attn_qkv.weight", (q + 2 * kv, d))]
            if c.qkv_bias:
                plan[m + "self_attn.qkv_proj.bias"] = [(g + "attn_qkv.bias", (q + 2 * kv,))]
        else:
            plan[m + "self_attn.qkv_proj.weight"] = [(g + "attn_q.weight", (q, d)), (g + "attn_k.weight", (kv, d)),
                                                     (g + "attn_v.weight", (kv, d))]
            if c.qkv_bias:
                plan[m + "self_attn.qkv_proj.bias"] = [(g + "attn_q.bias", (q,)), (g + "attn_k.bias", (kv,)),
                                                       (g + "attn_v.bias", (kv,))]
        plan[m + "self_attn.o_proj.weight"] = [(g + "attn_output.weight", (d, q))]
        plan[m + "mlp.gate_up_proj.weight"] = [(g + "ffn_gate.weight", (ffn, d)), (g + "ffn_up.weight", (ffn, d))]
        plan[m + "mlp.down_proj.weight"] = [(g + "ffn_down.weight", (d, ffn))]
        plan[m + "input_layernorm.weight"] = [(g + "attn_norm.weight", (d,))]
        plan[m + "post_attention_layernorm.weight"] = [(g + "ffn_norm.weight", (d,))]
    return plan


def load_gguf(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
              progress: bool | None = None) -> Qwen:
    """Load a ``.gguf`` file (architecture qwen2 or qwen) as a dense :class:`Qwen` (float32 unless
    ``dtype`` says otherwise).

    Every tensor's presence and shape is checked against the metadata before any dequantising, so a
    broken file fails in milliseconds with the offending tensor named.
    """
    dtype = resolve_dtype(dtype) or torch.float32
    with GGUFFile(path) as f:
        config = config_from_gguf(f)
        plan = _layout(config, fused_qkv=f.architecture == "qwen")
        wanted = set()
        for parts in plan.values():
            for name, shape in parts:
                wanted.add(name)
                if name not in f.tensors:
                    raise CheckpointError(f"{f.path} lacks tensor {name!r}")
                if f.tensors[name].shape != shape:
                    raise CheckpointError(
                        f"{f.path}: tensor {name!r} has shape {f.tensors[name].shape}, the metadata implies {shape}"
                    )
        unused = sorted(set(f.tensors) - wanted - {"rope_freqs.weight"})
        if unused:
            raise CheckpointError(f"{f.path} has tensors the model does not use: {unused[:5]}")
        if progress is None:
            progress = sys.stderr.isatty()
        from tqdm.auto import tqdm  # noqa: PLC0415

        # Dequantise straight into the rows of each (fused) parameter. Work is spread over a few
        # Python threads running single-threaded torch ops (they release the GIL): on a busy machine
        # that degrades gracefully, where intra-op parallelism over many small ops collapses.
        fused: dict[str, torch.Tensor] = {}
        jobs: list[tuple[str, torch.Tensor]] = []
        for key, parts in plan.items():
            rows = sum(shape[0] for _, shape in parts)
            fused[key] = torch.empty((rows, *parts[0][1][1:]), dtype=torch.float32)
            start = 0
            for name, shape in parts:
                jobs.append((name, fused[key][start : start + shape[0]]))
                start += shape[0]
        jobs.sort(key=lambda job: -job[1].numel())  # big first: better balance across workers
        workers = max(1, min(torch.get_num_threads(), len(jobs), 8))
        bar = tqdm(total=sum(out.numel() for _, out in jobs), desc=f"dequantising {f.path.name}", unit="w",
                   unit_scale=True, disable=not progress)
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            for out in pool.map(lambda job: f.tensor(job[0], out=job[1]), jobs):
                bar.update(out.numel())
        bar.close()
        state = {k: v if dtype == torch.float32 else v.to(dtype) for k, v in fused.items()}
    return build_model(config, state, dtype, device)
