"""GGUF weights (llama.cpp's format) of the ``qwen2`` architecture (Qwen1.5 / 2 / 2.5) and of the
first generation's ``qwen`` architecture, loaded as a dense :class:`openqwen.Qwen`.

* :func:`dequantize` turns raw GGML blocks into float32 with whole-tensor torch operations
  (F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K and also Q4_0, Q4_1, Q5_1, Q5_K). Other block types fall
  back to ``gguf.quants.dequantize`` (vectorised numpy, slower). The results equal the ``gguf``
  package's reference dequantisers bit for bit (tested).
* :func:`config_from_gguf` reads every metadata field that changes the function and refuses what
  openqwen does not implement (RoPE scaling other than linear / yarn, partial rotary dimensions, value
  heads wider than keys).
* :data:`GGUF_NAMES` maps the tensors. llama.cpp's converter stores qwen2 and qwen Q/K rows
  unpermuted (it permutes only LLaMA-family checkpoints), so the projections map across as they
  are; the real-weights test against transformers' own GGUF loading confirms it for qwen2. For qwen
  it keeps the fused ``attn_qkv``, names ``mlp.w2`` ``ffn_gate`` and ``mlp.w1`` ``ffn_up``, and stores
  the config's doubled FFN size as ``feed_forward_length``.

The header is read by :mod:`openqwen.checkpoint.gguf_file`. By default the model is dequantised
(float32, or ``dtype``). With ``load_gguf(..., linear_builder=...)`` the linear layers are handed over
as raw blocks instead (:class:`RawLinear`) and never exist in float32: the inference loader packs them
into its int4 / int8 layers (:func:`q4_k_groups` reads Q4_K blocks as int4 codes, scales and offsets,
exactly), and the peak memory of a load is the quantised model plus one tensor.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import QwenConfig
from ..model import Qwen
from .common import CheckpointError, NameMap, Rename, build_model, resolve_dtype
from .gguf_file import GGUFFile, GGUFTensorInfo, ggml_type_info

SUPPORTED_ARCHITECTURES = ("qwen2", "qwen")
"""qwen2: Qwen1.5 / Qwen2 / Qwen2.5. qwen: the first generation (fused ``attn_qkv``), as converted by llama.cpp."""

# GGML tensor type ids (ggml.h numbering) of the types with a fast path below; names and block sizes
# of every type come from the gguf package.
_F32, _F16, _Q4_0, _Q4_1, _Q5_0, _Q5_1, _Q8_0, _Q4_K, _Q5_K, _Q6_K, _BF16 = 0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30
QK_K = 256


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
    name, block, size = ggml_type_info(ggml_type)
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


def q4_k_groups(raw: torch.Tensor | np.ndarray, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K blocks of a [rows, K] tensor as group-wise int4 without dequantising: (codes uint8 [rows, K]
    0..15, scale fp32 [rows, K / 32], offset fp32 [rows, K / 32]) with weight = code * scale + offset per
    group of 32, the same fp32 values :func:`dequantize` gives (scale d * sc, offset -(dmin * m))."""
    if isinstance(raw, np.ndarray):
        raw = torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(-1))
    rows, k = shape
    _, block, size = ggml_type_info(_Q4_K)
    if k % block or raw.numel() != rows * k // block * size:
        raise CheckpointError(f"Q4_K data of {raw.numel()} bytes does not hold a tensor of shape {tuple(shape)}")
    b = raw.reshape(-1, size)
    sc, mn = _k_scales(b[:, 4:16])
    codes = _unpack_nibbles(b[:, 16:].reshape(-1, 4, 32))  # [blocks, 4, 64]: sub-blocks in order
    scale = _f16(b[:, :2]) * sc
    offset = -(_f16(b[:, 2:4]) * mn)
    return codes.reshape(rows, k), scale.reshape(rows, k // 32), offset.reshape(rows, k // 32)


def read_tensor(f: GGUFFile, name: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """One tensor of the file dequantised to float32 (a new tensor, or written into ``out``)."""
    raw = f.raw(name)  # a CheckpointError naming the file when it has no such tensor
    info = f.tensors[name]
    return dequantize(torch.from_numpy(raw), info.ggml_type, info.shape, out=out)


# ------------------------------------------------------------------------------------- mapping
def _names(fused_qkv: bool) -> NameMap:
    b = "blk.{i}."
    if fused_qkv:  # first generation: one tensor, rows Q | K | V, exactly the model's layout
        qkv = [Rename("layers.{i}.self_attn.qkv_proj.weight", (b + "attn_qkv.weight",)),
               Rename("layers.{i}.self_attn.qkv_proj.bias", (b + "attn_qkv.bias",), when="qkv_bias")]
    else:
        qkv = [Rename("layers.{i}.self_attn.qkv_proj.weight", tuple(b + f"attn_{n}.weight" for n in "qkv"), "qkv"),
               Rename("layers.{i}.self_attn.qkv_proj.bias", tuple(b + f"attn_{n}.bias" for n in "qkv"), "qkv",
                      when="qkv_bias")]
    return NameMap(
        [
            Rename("embed_tokens.weight", ("token_embd.weight",)),
            Rename("norm.weight", ("output_norm.weight",)),
            Rename("lm_head.weight", ("output.weight",), when="untied"),
            *qkv,
            Rename("layers.{i}.self_attn.o_proj.weight", (b + "attn_output.weight",)),
            Rename("layers.{i}.mlp.gate_up_proj.weight", (b + "ffn_gate.weight", b + "ffn_up.weight"), "halves"),
            Rename("layers.{i}.mlp.down_proj.weight", (b + "ffn_down.weight",)),
            Rename("layers.{i}.input_layernorm.weight", (b + "attn_norm.weight",)),
            Rename("layers.{i}.post_attention_layernorm.weight", (b + "ffn_norm.weight",)),
        ],
        ignored=[r"^rope_freqs\.weight$"],
    )


GGUF_NAMES = {"qwen2": _names(fused_qkv=False), "qwen": _names(fused_qkv=True)}
"""openqwen's parameters <-> GGUF tensor names, per architecture."""


def config_from_gguf(f: GGUFFile) -> QwenConfig:
    """QwenConfig from the metadata of a qwen2 / qwen GGUF file (vocab size from ``token_embd``).

    Optional fields default as llama.cpp defaults them; the rest are required."""
    arch = f.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{f.path} holds architecture {arch!r}; openqwen reads GGUF files of architecture "
            f"{' and '.join(repr(a) for a in SUPPORTED_ARCHITECTURES)} (Qwen1.5 / 2 / 2.5, and the first generation)"
        )
    meta = f.metadata
    missing = object()

    def get(key: str, default: Any = missing) -> Any:
        full = f"{arch}.{key}"
        if full not in meta:
            if default is missing:
                raise CheckpointError(f"{f.path} lacks the metadata field {full!r}")
            return default
        return meta[full]

    if "token_embd.weight" not in f.tensors:
        raise CheckpointError(f"{f.path} lacks tensor 'token_embd.weight'")
    rope_scaling = _rope_scaling(get, f.path)
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", hidden // heads))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise CheckpointError(f"{f.path}: value heads of {get('attention.value_length')} dims differ from key heads "
                              f"of {head_dim}; openqwen needs them equal")
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise CheckpointError(f"{f.path}: RoPE rotates {get('rope.dimension_count')} of {head_dim} head dims; "
                              "openqwen rotates all of them")
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
    context = int(get("context_length"))
    trained = int(rope_scaling.get("original_max_position_embeddings", context)) if rope_scaling else context
    return QwenConfig(
        vocab_size=f.tensors["token_embd.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=int(get("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim,
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        qkv_bias="blk.0.attn_q.bias" in f.tensors or "blk.0.attn_qkv.bias" in f.tensors,
        tie_word_embeddings="output.weight" not in f.tensors,
        max_position_embeddings=context,
        seq_length=trained,
        rope_scaling=rope_scaling,
    )


def _rope_scaling(get: Any, path: Any) -> dict[str, Any] | None:
    """``QwenConfig.rope_scaling`` from llama.cpp's ``rope.scaling.*`` keys, as its converter wrote them from
    the Hugging Face config (linear: factor, or the older ``rope.scale_linear``; yarn: factor, original
    context length, beta_fast / beta_slow when stored); other types are refused."""
    kind = str(get("rope.scaling.type", "none") or "none")
    legacy = float(get("rope.scale_linear", 1.0))
    if kind == "none" and legacy == 1.0:
        return None
    if kind in ("none", "linear"):
        return {"rope_type": "linear", "factor": float(get("rope.scaling.factor", legacy))}
    if kind == "yarn":
        out: dict[str, Any] = {"rope_type": "yarn", "factor": float(get("rope.scaling.factor"))}
        for ours, theirs in (("original_max_position_embeddings", "rope.scaling.original_context_length"),
                             ("beta_fast", "rope.scaling.yarn_beta_fast"), ("beta_slow", "rope.scaling.yarn_beta_slow")):
            value = get(theirs, None)
            if value is not None:
                out[ours] = int(value) if ours.startswith("original") else float(value)
        return out
    raise CheckpointError(f"{path} asks for RoPE scaling {kind!r}; openqwen implements linear and yarn in GGUF files")


@dataclass(frozen=True)
class RawLinear:
    """One linear layer of a GGUF file as stored: its parts (the rows of a fused Q|K|V or gate|up, in
    order) with their raw bytes, and its bias dequantised (fp32, or None)."""

    name: str
    """The model's parameter name (``layers.0.self_attn.qkv_proj.weight``)."""
    parts: tuple[tuple[GGUFTensorInfo, torch.Tensor], ...]
    bias: torch.Tensor | None

    @property
    def shape(self) -> tuple[int, int]:
        return sum(info.shape[0] for info, _ in self.parts), self.parts[0][0].shape[1]

    def dequantize_part(self, i: int) -> torch.Tensor:
        """Part ``i`` in float32 (for layers the caller does not keep in their stored blocks)."""
        info, raw = self.parts[i]
        return dequantize(raw, info.ggml_type, info.shape)


LinearBuilder = Callable[[RawLinear], torch.nn.Module]
EmbeddingBuilder = Callable[[GGUFTensorInfo, torch.Tensor], "torch.nn.Module | None"]


def _is_linear(key: str) -> bool:
    return key.endswith("_proj.weight") or key == "lm_head.weight"


def load_gguf(path: str | Path, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
              progress: bool | None = None, linear_builder: LinearBuilder | None = None,
              embedding_builder: EmbeddingBuilder | None = None) -> Qwen:
    """Load a ``.gguf`` file (architecture qwen2 or qwen) as a dense :class:`Qwen` (float32 unless
    ``dtype`` says otherwise).

    linear_builder: called with each linear layer's :class:`RawLinear` (the output head too, unless
    tied), returning the module that replaces it; those weights are never dequantised here (the rest,
    norms and the embedding, are, in ``dtype``). A tied head stays tied to the float embedding.
    embedding_builder: with ``linear_builder`` and an untied head, called with ``token_embd``'s tensor
    info and raw bytes (a view of the mapped file); a module it returns replaces the embedding, which
    is then not dequantised; None keeps the float embedding.

    Every tensor's presence and shape is checked against the metadata before any dequantising, so a
    broken file fails once the header is read (0.67 s of the 0.5B file's 8 s load in
    docs/benchmarks/load.md) with the offending tensor named.
    """
    dtype = resolve_dtype(dtype) or torch.float32
    with GGUFFile(path) as f:
        config = config_from_gguf(f)
        plan = GGUF_NAMES[f.architecture].check({n: t.shape for n, t in f.tensors.items()}, config, str(f.path),
                                                implied_by="the metadata")
        if progress is None:
            progress = sys.stderr.isatty()
        from tqdm.auto import tqdm  # noqa: PLC0415

        # Dequantise straight into the rows of each (fused) parameter. Work is spread over a few
        # Python threads running single-threaded torch ops (they release the GIL): on a busy machine
        # that degrades gracefully, where intra-op parallelism over many small ops collapses.
        fused: dict[str, torch.Tensor] = {}
        jobs: list[tuple[str, torch.Tensor]] = []
        raw_linears = {k: p for k, p in plan.items() if _is_linear(k)} if linear_builder else {}
        built: dict[str, torch.nn.Module] = {}
        if raw_linears and embedding_builder is not None and not config.tie_word_embeddings:
            (name, _), = plan["embed_tokens.weight"]
            module = embedding_builder(f.tensors[name], torch.from_numpy(f.raw(name)))
            if module is not None:
                built["embed_tokens"] = module
        for key, parts in plan.items():
            if key in raw_linears or key.removesuffix(".weight") in built:
                continue
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
            for out in pool.map(lambda job: read_tensor(f, job[0], out=job[1]), jobs):
                bar.update(out.numel())
        bar.close()
        if not raw_linears:
            return build_model(config, fused, dtype, device)  # build_model casts to dtype and moves to device
        layers = [RawLinear(key, tuple((f.tensors[n], torch.from_numpy(f.raw(n))) for n, _ in parts),
                            fused.pop(key.removesuffix("weight") + "bias", None))
                  for key, parts in raw_linears.items()]
        layers.sort(key=lambda layer: -layer.shape[0] * layer.shape[1])  # big first, as above
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            modules = {layer.name.removesuffix(".weight"): module
                       for layer, module in zip(layers, pool.map(linear_builder, layers))}
        modules.update(built)
    return _build_with_linears(config, fused, modules, dtype, device)


def _build_with_linears(config: QwenConfig, state: dict[str, torch.Tensor], modules: dict[str, torch.nn.Module],
                        dtype: torch.dtype, device: str | torch.device) -> Qwen:
    """The model of ``config`` from float ``state`` (everything but the linears) and ready linear ``modules``
    (by module name), built on the meta device so that no float linear weight is ever allocated."""
    with torch.device("meta"):
        model = Qwen(config)
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.to(device))
    expected = {n: t.shape for n, t in model.state_dict().items() if t.is_meta}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    for name, shape in expected.items():
        if name not in state:
            raise CheckpointError(f"checkpoint lacks tensor for {name!r}")
        if tuple(state[name].shape) != tuple(shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(state[name].shape)}, the config implies {tuple(shape)}")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()
