"""A GGUF file's quantised linears packed into openqwen's int4 / int8 layers, without a float32 model.

:func:`openqwen.checkpoint.gguf.load_gguf` hands each linear layer over as its raw blocks
(:class:`~openqwen.checkpoint.gguf.RawLinear`); the builders here turn them into modules:

* :func:`int4_builder`: every layer becomes an :class:`~openqwen.infer.quant.Int4Linear` with groups of
  32. Q4_K blocks map across exactly (code, scale d * sc, offset -dmin * m: the dequantised weights are
  bit for bit those of ``gguf``'s reference dequantiser), and so do Q4_0 blocks (code, scale d, zero 8:
  Q4_0's nibble order is our packing's, so its bytes are copied; what ``openqwen quantize --format gguf``
  writes loads back to its own codes). Other block types (Q5_0, Q6_K, Q8_0 ... in a
  q4_k_m file) are rounded to int4 (asymmetric, round-to-nearest, groups of 32; Q5_0 / Q8_0 straight
  from their blocks in C, others dequantised one tensor at a time): that rounding is the documented
  cost (docs/inference.md, precision). The output head is kept at int8
  (:class:`~openqwen.infer.quant.Int8Linear`, per-row scales), where 4 bits cost the most.
* :func:`int8_builder`: every layer becomes an ``Int8Linear`` (per-row int8), dequantised in chunks of
  rows, never a whole float32 matrix. Q8_0 rows whose blocks all share one scale (what our export
  writes) keep their codes and that scale exactly; other rows are rounded to a per-row grid.

Peak memory of a load is the quantised model plus one layer's float32 rows.

The input embedding of a file whose ``token_embd`` is stored in fewer than 8 bits per weight (Q5_0 in
the q4_k_m Qwen2.5-0.5B) keeps those blocks as they are (:class:`GGUFBlockEmbedding`): a lookup
dequantises the rows it gathers, to exactly the file's values, and the matrix costs what it costs in
the file (93 MB instead of 136 MB as int8 rows for that model).
"""

from __future__ import annotations

import torch
from torch import nn

from ..checkpoint.gguf import RawLinear, dequantize, q4_k_groups
from ..checkpoint.gguf_file import GGUFTensorInfo, ggml_type_info
from .kernels import gather_rows_gguf, round_groups_int4_c, round_rows_int8_c
from .quant import Int4Linear, Int8Linear, pack_int4, quantize_rtn_int4

GGUF_INT4_GROUP = 32
"""Group size of int4 layers built from GGUF blocks: the sub-block of Q4_K / Q5_K and the block of Q4_0 / Q5_0 / Q8_0."""
_C_BLOCKS = ("Q5_0", "Q8_0")  # block types the C rounding reads straight from a file's bytes (raw is uint8)

_Q4_0, _Q8_0, _Q4_K = 2, 8, 12
_ROW_CHUNK = 8192


def _part_rows(raw: torch.Tensor, ggml_type: int, shape: tuple[int, int], start: int, stop: int) -> torch.Tensor:
    """Rows [start, stop) of a stored tensor in float32 (a row of GGML blocks is a contiguous run of bytes)."""
    per_row = raw.numel() // shape[0]
    return dequantize(raw.view(shape[0], per_row)[start:stop].reshape(-1), ggml_type, (stop - start, shape[1]))


def int4_linear_from_gguf(layer: RawLinear, group_size: int = GGUF_INT4_GROUP) -> Int4Linear:
    """One layer as int4: Q4_K parts exactly, other parts rounded to nearest (see the module docstring)."""
    codes, scales, offsets, zeros = [], [], [], []
    for info, raw in layer.parts:
        if info.ggml_type == _Q4_K and group_size == 32:
            q, s, o = q4_k_groups(raw, info.shape)
            codes.append(pack_int4(q))
            z = None  # Q4_K offsets are not whole multiples of the scale: no integer zero points
        elif info.ggml_type == _Q4_0 and group_size == 32:
            packed, s = q4_0_groups(raw, info.shape)
            codes.append(packed)
            z = torch.full_like(s, 8.0)
            o = -z * s
        else:
            # Q8_0 / Q5_0 parts are rounded straight from their blocks in C, the same bits as below
            direct = (round_groups_int4_c(raw, *info.shape, group_size, source=info.type_name)
                      if info.type_name in _C_BLOCKS else None)
            if direct is not None:
                packed, s, o = direct
                codes.append(packed)
            else:
                q, s, rz = quantize_rtn_int4(_part_rows(raw, info.ggml_type, info.shape, 0, info.shape[0]), group_size)
                codes.append(pack_int4(q))
                o = -rz * s  # as before Q4_0 was read exactly: offsets only, the kernels' form
            z = None
        scales.append(s)
        offsets.append(o)
        zeros.append(z)
    # a layer of Q4_0 parts keeps its zero points: dequantize() then returns exactly (q - 8) * d, as gguf does
    zero = None if any(z is None for z in zeros) else torch.cat(zeros)
    return Int4Linear(torch.cat(codes), torch.cat(scales), torch.cat(offsets), group_size, layer.bias, zero)


def q4_0_groups(raw: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_0 blocks (fp16 ``d``, 16 bytes of nibbles; ``w = d * (q - 8)``) of a [rows, K] tensor as
    (packed int4 codes uint8 [rows, K / 2] in :func:`pack_int4` order, scales fp32 [rows, K / 32])."""
    rows, k = shape
    blocks = raw.reshape(rows * (k // 32), 18)
    d = blocks[:, :2].contiguous().view(torch.float16).float().reshape(rows, k // 32)
    return blocks[:, 2:].reshape(rows, k // 2).contiguous(), d


def _q8_0_uniform_rows(raw: torch.Tensor, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Q8_0 blocks of [rows, K] as (int8 codes [rows, K], scale fp32 [rows]) when every block of each row
    has the same ``d`` (then the per-row int8 grid holds them exactly), else None."""
    rows, k = shape
    blocks = raw.reshape(rows, k // 32, 34)
    d = blocks[:, :, :2].contiguous().view(torch.float16).reshape(rows, k // 32)
    if not torch.equal(d, d[:, :1].expand_as(d)):
        return None
    return blocks[:, :, 2:].contiguous().view(torch.int8).reshape(rows, k), d[:, 0].float()


def int8_linear_from_gguf(layer: RawLinear) -> Int8Linear:
    """One layer as per-row int8, dequantised a chunk of rows at a time."""
    rows, k = layer.shape
    weight = torch.empty(rows, k, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    at = 0
    for info, raw in layer.parts:
        exact = _q8_0_uniform_rows(raw, info.shape) if info.ggml_type == _Q8_0 else None
        if exact is not None:
            weight[at : at + info.shape[0]], scale[at : at + info.shape[0]] = exact
            at += info.shape[0]
            continue
        # Q8_0 / Q5_0 rows are rounded straight from their blocks in C (no float32 rows at all)
        direct = round_rows_int8_c(raw, *info.shape, source=info.type_name) if info.type_name in _C_BLOCKS else None
        if direct is not None:
            weight[at : at + info.shape[0]], scale[at : at + info.shape[0]] = direct
            at += info.shape[0]
            continue
        for start in range(0, info.shape[0], _ROW_CHUNK):
            stop = min(start + _ROW_CHUNK, info.shape[0])
            chunk = Int8Linear(_part_rows(raw, info.ggml_type, info.shape, start, stop), None)
            weight[at + start : at + stop] = chunk.weight
            scale[at + start : at + stop] = chunk.scale
        at += info.shape[0]
    module = Int8Linear(torch.zeros(1, k), None)  # then given the real buffers (no float32 matrix made)
    module.out_features = rows
    module.weight, module.scale = weight, scale
    module.bias = None if layer.bias is None else layer.bias.float().contiguous()
    return module


def int4_builder(layer: RawLinear) -> nn.Module:
    """The ``linear_builder`` of ``load_gguf`` for the int4 precision (the head: int8)."""
    k = layer.shape[1]
    if layer.name == "lm_head.weight" or k % GGUF_INT4_GROUP:
        return int8_linear_from_gguf(layer)
    return int4_linear_from_gguf(layer)


def int8_builder(layer: RawLinear) -> nn.Module:
    """The ``linear_builder`` of ``load_gguf`` for the int8 precision."""
    return int8_linear_from_gguf(layer)


class GGUFBlockEmbedding(nn.Module):
    """An input embedding kept as a GGUF file's quantised blocks: ``weight`` holds each token's row of
    raw block bytes [vocab, bytes per row] (uint8), and a lookup dequantises only the rows it gathers
    (:func:`openqwen.checkpoint.gguf.dequantize`, so exactly the values the whole-matrix dequantisation
    gives). For inference only: training needs float rows."""

    def __init__(self, weight: torch.Tensor, ggml_type: int, embedding_dim: int) -> None:
        super().__init__()
        name, block, size = ggml_type_info(ggml_type)
        if weight.dtype != torch.uint8 or weight.dim() != 2 or embedding_dim % block \
                or weight.shape[1] != embedding_dim // block * size:
            raise ValueError(f"GGUFBlockEmbedding takes {name} rows of {embedding_dim // block * size} bytes "
                             f"as uint8 [vocab, bytes], got {weight.dtype} {tuple(weight.shape)}")
        self.register_buffer("weight", weight)
        self.ggml_type, self.type_name = ggml_type, name
        self.num_embeddings, self.embedding_dim = weight.shape[0], embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = gather_rows_gguf(self.weight, self.ggml_type, input_ids, self.embedding_dim)  # C, for Q8_0 / Q5_0
        if out is None:
            rows = self.weight[input_ids.reshape(-1)]
            out = dequantize(rows, self.ggml_type, (rows.shape[0], self.embedding_dim))
        return out.view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.type_name} blocks as stored"


def block_embedding_builder(info: GGUFTensorInfo, raw: torch.Tensor, max_bits: float = 8.0) -> GGUFBlockEmbedding | None:
    """The ``embedding_builder`` of ``load_gguf``: ``token_embd`` as a :class:`GGUFBlockEmbedding` (its
    bytes copied out of the mapped file) when it is stored in blocks of fewer than ``max_bits`` bits per
    weight (int8 rows, the alternative, cost a little over 8), else None."""
    _, block, size = ggml_type_info(info.ggml_type)
    if block == 1 or 8 * size / block >= max_bits:  # float types, Q8_0
        return None
    rows, dim = info.shape
    return GGUFBlockEmbedding(raw.clone().reshape(rows, -1), info.ggml_type, dim)
