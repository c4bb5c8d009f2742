"""Decode-speed precisions for CPU: weight-only int8 and bf16 linears, swapped in from outside the model.

Decoding one token at a time is a matrix-vector product per linear layer: the time goes into reading
the weights from memory, so fewer bytes per weight means more tokens per second. Two module swaps:

* :class:`Int8Linear` (``quantize_int8(model)``): weights rounded to int8 with one fp32 scale per
  output row (symmetric, absmax / 127). 4x fewer bytes than fp32. Activations are rounded to int16 in
  blocks of 64 (one scale per block, absmax / 32767: a relative step of 3e-5, far finer than the
  weights' own rounding) so the kernel multiplies integers, twice as fast as converting every weight
  to fp32; every path (kernel, prefill, torch fallback) applies the same rounding, so the path a
  layer takes changes its result only by fp32 summation order.
* :class:`BF16Linear` (``optimise_for_decode(model)`` on a bf16 model): bf16 weights, fp32 activations
  and accumulation.

Both run small batches (decode, M <= 64 rows) through the AVX2/FMA C kernel of
:mod:`openqwen.infer.kernels` (compiled once on first use); it streams each weight row once for all
rows of the batch, converting to fp32 in registers. Without a compiler or AVX2 they fall back to torch
(``torch.ops.aten._weight_int8pack_mm`` for int8, which has no fast AVX2 path, and ``F.linear`` for
bf16). Prefill (many rows) is compute-bound and multiplies by the dequantised fp32 weight, on oneDNN
where it beats MKL (non-Intel CPUs: :func:`openqwen.train.cpu_matmul.onednn_preferred`). Where the CPU
has native bf16 dot products (``avx512_bf16`` / ``amx_bf16``), int8 and int4 layers multiply long
prompts in bf16 instead (:func:`openqwen.train.cpu_matmul.bf16_products_preferred`, inference only):
twice the fp32 rate, for a perplexity cost of about 0.01 % (int8) and 0.05 % (int4) on the q4_k_m
Qwen2.5-0.5B (docs/inference.md).
The generation engine goes further at decode time and runs whole decode steps in C
(:class:`openqwen.infer.kernels.FusedDecoder`) over these same modules.

The model file knows nothing of this: quantisation replaces ``nn.Linear`` modules after loading.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from openqwen.train.cpu_matmul import bf16_products_preferred, matmul_nt, onednn_preferred

from .kernels import (KERNEL_ROW_CHUNK, W_BF16, W_I4, W_I8, dequantize_int4, kernel_status,  # noqa: F401
                      linear_forward, linear_spec, load_kernels, round_rows_int8_c)

ACTIVATION_BLOCK = 64
"""int8 layers round activations to int16 in blocks of this many inputs (must match QBLK in kernels.c)."""


def round_activations_int16(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] (K % ACTIVATION_BLOCK == 0) rounded as the int8 kernel rounds it: per block of 64,
    scale = absmax / 32767, q = round-half-even(x / scale) clamped to +-32767, returned as q * scale."""
    return _round_blocks(x, ACTIVATION_BLOCK, 32767)


def _round_blocks(x: torch.Tensor, block: int, qmax: int) -> torch.Tensor:
    """Symmetric rounding per ``block`` inputs onto qmax steps of absmax / qmax (the kernels' rounding:
    the reciprocal of the scale, then round-half-even)."""
    shape = x.shape
    xb = x.float().reshape(-1, shape[-1] // block, block)
    scale = xb.abs().amax(-1, keepdim=True) / float(qmax)
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(xb * inv).clamp_(-qmax, qmax)
    return (q * scale).reshape(shape)


INT4_ACTIVATION_BLOCK = 32
"""int4 layers round activations to int8 per segment of this many inputs (kernels.c's int4 path)."""


def round_activations_int8(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] (K % 32 == 0) rounded as the int4 kernel rounds it: per block of 32, scale = absmax / 127,
    q = round-half-even(x * (1 / scale)) clamped to +-127, returned as q * scale. A relative step of
    0.8 % of the block's largest value (llama.cpp's Q8 activations for its 4-bit products), well under
    the int4 weights' own rounding: the kernel then multiplies bytes by nibbles."""
    return _round_blocks(x, INT4_ACTIVATION_BLOCK, 127)


MAX_KERNEL_ROWS = 384
"""Up to this many rows (decode, and prefills of short prompts) a bf16 layer (the default ``kernel_rows``)
runs through the C kernel, in chunks of KERNEL_ROW_CHUNK rows whose rounded activations stay in the L2
cache; int8 and int4 layers have no limit since 2026-12-04 (:data:`NO_ROW_LIMIT`). On the 2-core
benchmark machine (Qwen2.5-0.5B, int8) that prefills 128 tokens in 2.0 s against 4.8 s for torch's
matmul (MKL) on weights dequantised at every call, 256 in 3.5 s against 5.6 s; from about 400 rows up
the matmul wins (512: 7.2 s against 8.3 s), its dequantisation spread over many rows. Each layer type
states its own limit per library (``kernel_rows``): ``benchmarks/bench_prefill_matmul.py`` measured
them on a 2-core AVX-512 EPYC (2026-12-03), where oneDNN's matmul ties the int8 kernel at 256 rows and
beats the int4 kernel (whose 4-bit unpacking costs more per row) from 32 rows, MKL from 64."""


NO_ROW_LIMIT = sys.maxsize
"""A ``kernel_rows`` entry for layer types whose C kernel beats torch's fp32 matmul at every prompt
length: since the int8 and int4 kernels keep their accumulators in registers (2026-12-04), they
prefill 64-2,048 tokens 1.07-2.7x faster than MKL or oneDNN on the dequantised weight on a 2-core AVX2
EPYC (``benchmarks/bench_prefill_matmul.py``; docs/benchmarks/inference.md). CPUs with native bf16
products still switch to those past ``bf16_kernel_rows``."""


class _KernelLinear(nn.Module):
    """Shared forward: small batches through the C kernel, large ones through torch."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None
    _spec_cache: tuple | None = None
    kernel_rows: tuple[int, int] = (MAX_KERNEL_ROWS, MAX_KERNEL_ROWS)
    """(with MKL, with oneDNN): the most rows this layer type sends through the C kernel."""

    def max_kernel_rows(self, onednn: bool) -> int:
        return self.kernel_rows[1 if onednn else 0]

    bf16_products = False
    """Whether long prompts may be multiplied in bf16 when :func:`bf16_products_preferred` says so."""
    bf16_kernel_rows = MAX_KERNEL_ROWS
    """With bf16 products, the most rows through the C kernel: prompts past it take the bf16 matmul."""

    def _dense(self) -> torch.Tensor:  # fp32 weight for torch's matmul
        raise NotImplementedError

    def _bf16_product(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T with x and the dequantised weight rounded to bf16, accumulated in fp32 (oneDNN's
        bf16 kernels; the output comes back as bf16, then fp32)."""
        return (x.to(torch.bfloat16) @ self._dense().to(torch.bfloat16).t()).float()

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What torch's paths multiply (the C kernel takes fp32 x and does this itself)."""
        return x.float()

    def _spec(self):
        """The C view of this layer, rebuilt if the weight moved (e.g. after .to() or load_state_dict)."""
        key = (self.weight.data_ptr(), None if self.bias is None else self.bias.data_ptr())
        if self._spec_cache is None or self._spec_cache[0] != key:
            self._spec_cache = (key, linear_spec(self) if load_kernels() is not None else None)
        return self._spec_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        onednn = onednn_preferred()
        limit = self.max_kernel_rows(onednn)
        # bf16 products (inference only: training keeps fp32) where the CPU runs them natively
        bf16 = (self.bf16_products and x2.shape[0] > self.bf16_kernel_rows and not torch.is_grad_enabled()
                and bf16_products_preferred())
        if bf16:
            limit = min(limit, self.bf16_kernel_rows)
        spec = self._spec() if x2.shape[0] <= limit else None
        if spec is not None:
            xf = x2.float().contiguous()
            parts = [linear_forward(spec, xf[i : i + KERNEL_ROW_CHUNK], self.out_features)
                     for i in range(0, xf.shape[0], KERNEL_ROW_CHUNK)]
            y = torch.cat(parts) if parts else xf.new_empty(0, self.out_features)
        elif x2.shape[0] > limit:  # compute-bound: the library that multiplies fp32 fastest here
            if bf16:
                y = self._bf16_product(self._prepare_input(x2))
            else:
                y = matmul_nt(self._prepare_input(x2), self._dense(), onednn)
            if self.bias is not None:
                y += self.bias.float()
        else:
            y = self._fallback(self._prepare_input(x2))
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def round_rows_int8(w: torch.Tensor, chunk: int = 4096, threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``w`` [rows, k] rounded per row: int8 codes and scales (absmax / 127, symmetric), a chunk of rows
    at a time, so rounding a vocabulary-sized matrix (151,936 x 896) never holds more than one chunk of
    float temporaries: rounded whole, the 0.5B model's embedding raised the load's peak RSS from about
    1.9 to 2.4 GB. An fp32 matrix goes through the C kernel (:func:`~openqwen.infer.kernels.round_rows_int8_c`,
    the same bits in one pass, 10-15x faster) where it is available; ``threads``: its OpenMP threads."""
    rows = w.shape[0]
    if w.dtype == torch.float32 and w.dim() == 2 and w.is_contiguous():
        done = round_rows_int8_c(w, rows, w.shape[1], threads=threads)
        if done is not None:
            return done
    return round_rows_int8_torch(w, chunk)


def round_rows_int8_torch(w: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`round_rows_int8` in torch ops: the reference the C kernel is tested against."""
    rows = w.shape[0]
    q = torch.empty(w.shape, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    for start in range(0, rows, chunk):
        part = w[start:start + chunk].float()
        s = torch.linalg.vector_norm(part, float("inf"), dim=1).clamp_(min=1e-12) / 127.0  # absmax, one pass
        q[start:start + chunk] = (part / s[:, None]).round_().clamp_(-127, 127)
        scale[start:start + chunk] = s
    return q, scale


class Int8Linear(_KernelLinear):
    """y = x @ (int8 W * per-row scale)^T + b, with fp32 activations."""

    kernel_weight_type = W_I8  # what :func:`openqwen.infer.kernels.linear_spec` reads
    kernel_rows = (NO_ROW_LIMIT, NO_ROW_LIMIT)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        q, scale = round_rows_int8(weight.detach())
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    bf16_products = True
    # bf16 products tied the kernel at 32 rows and beat it 1.3x at 64 (AVX-512 EPYC, 2026-12-03: before
    # the kernel's 1.5-1.8x faster tiles of 2026-12-04, so worth measuring again on such a CPU)
    bf16_kernel_rows = 48

    def _dense(self) -> torch.Tensor:
        return torch.mul(self.weight, self.scale[:, None])  # int8 x fp32 -> fp32 in one pass

    def _bf16_product(self, x: torch.Tensor) -> torch.Tensor:
        # the int8 codes are exact in bf16: only the activations (and the output) are rounded
        return (x.to(torch.bfloat16) @ self.weight.to(torch.bfloat16).t()).float() * self.scale

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        # the kernel's int16 rounding, so that prefill and the fallback compute what decode computes
        return round_activations_int16(x) if self.in_features % ACTIVATION_BLOCK == 0 else x.float()

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.float().contiguous(), self.weight, self.scale)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


class Int8Embedding(nn.Module):
    """The input embedding as int8 rows with one fp32 scale per row: a lookup gathers the rows it needs
    and dequantises only those. Built from an :class:`Int8Linear` output head (:meth:`sharing`), the two
    read one copy of the matrix, as a tied checkpoint stores it: for Qwen2.5-0.5B that drops the fp32
    embedding (544 MB) from a quantised model's memory. The rows are the head's rows, so a lookup's
    rounding is the head's (per-row absmax / 127, what llama.cpp's 8-bit embedding rows cost too)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        if weight.dtype != torch.int8 or weight.dim() != 2 or scale.shape != weight.shape[:1]:
            raise ValueError("Int8Embedding takes int8 rows [vocab, hidden] and one scale per row")
        self.num_embeddings, self.embedding_dim = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale", scale)

    @classmethod
    def sharing(cls, head: "Int8Linear") -> "Int8Embedding":
        """An embedding that reads ``head``'s int8 rows and scales (no copy)."""
        return cls(head.weight, head.scale)

    @classmethod
    def from_float(cls, weight: torch.Tensor) -> "Int8Embedding":
        """``weight`` [vocab, hidden] rounded per row, as :class:`Int8Linear` rounds it."""
        return cls(*round_rows_int8(weight.detach()))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.weight[input_ids].float() * self.scale[input_ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row scales"


@torch.no_grad()
def quantize_embedding(model: nn.Module) -> nn.Module:
    """Replace the model's fp32 input embedding with an :class:`Int8Embedding`, in place: one sharing the
    output head's int8 rows when the head is an :class:`Int8Linear` of the same shape (a tied
    checkpoint), else its own int8 copy. For quantised inference only: training needs float rows."""
    embed = model.embed_tokens
    if not isinstance(embed, nn.Embedding):  # already int8 rows, or a GGUF's own blocks (gguf_quant)
        return model
    head = getattr(model, "lm_head", None)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))  # the head was made from these rows
    if tied and isinstance(head, Int8Linear) and head.weight.shape == embed.weight.shape:
        model.embed_tokens = Int8Embedding.sharing(head)
    else:
        model.embed_tokens = Int8Embedding.from_float(embed.weight)
    return model


class BF16Linear(_KernelLinear):
    """bf16 weights, fp32 accumulation; output in the input's dtype."""

    kernel_weight_type = W_BF16

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def _dense(self) -> torch.Tensor:
        return self.weight.float()

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16"


INT4_SEGMENT = 32
"""Int4 codes are packed per segment of 32 inputs: byte i holds input i (low nibble) and input i + 16 (high
nibble), so the kernel widens 16 bytes into two runs of 16 consecutive weights. Groups are whole segments."""


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, K] (0..15, K % 32 == 0) -> packed bytes [N, K / 2] in :data:`INT4_SEGMENT` order."""
    n, k = q.shape
    seg = q.to(torch.uint8).reshape(n, k // INT4_SEGMENT, 2, INT4_SEGMENT // 2)
    return (seg[:, :, 0] | (seg[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int4`: uint8 codes [N, K]."""
    n, half = packed.shape
    seg = packed.reshape(n, half // (INT4_SEGMENT // 2), 1, INT4_SEGMENT // 2)
    return torch.cat([seg & 15, seg >> 4], dim=2).reshape(n, 2 * half)


def quantize_rtn_int4(weight: torch.Tensor, group_size: int = 128, symmetric: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest group-wise int4 of a weight [out, in] -> (q uint8 [out, in] 0..15, scales fp32
    [out, in / group_size], zeros fp32 of the same shape, or None when ``symmetric``).

    symmetric: scale = absmax / 7, q = round(w / scale) + 8 in 1..15 (zero point 8).
    asymmetric: scale = (max - min) / 15, zero = round(-min / scale) in 0..15, q = round(w / scale) + zero."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    if group_size < 1 or in_f % group_size:
        raise ValueError(f"group_size {group_size} must divide the layer's {in_f} inputs")
    g = w.reshape(out_f, in_f // group_size, group_size)
    if symmetric:
        scales = (g.abs().amax(-1) / 7.0).clamp(min=1e-12)
        q = torch.round(g / scales[..., None]).clamp(-8, 7) + 8
        zeros = None
    else:
        lo, hi = g.amin(-1).clamp(max=0.0), g.amax(-1).clamp(min=0.0)
        scales = ((hi - lo) / 15.0).clamp(min=1e-12)
        zeros = torch.round(-lo / scales).clamp(0, 15)
        q = (torch.round(g / scales[..., None]) + zeros[..., None]).clamp(0, 15)
    return q.reshape(out_f, in_f).to(torch.uint8), scales.contiguous(), zeros


class Int4Linear(_KernelLinear):
    """Group-wise int4 weight-only linear: w[n, k] = q[n, k] * scale[n, g] + offset[n, g], g = k // group_size.

    Built from codes and scales (:meth:`from_quantized`, the layout GPTQ and round-to-nearest produce:
    w = (q - zero) * scale, offset = -zero * scale) or from llama.cpp's Q4_K blocks (scale d * sc, offset
    -dmin * m, groups of 32; :mod:`openqwen.checkpoint.gguf`). Activations are rounded to int8 per block of
    32 (:func:`round_activations_int8`), so the C kernel multiplies nibbles by bytes; the torch paths
    apply the same rounding and multiply by :meth:`dequantize`.

    Buffers: ``weight`` uint8 [n, k / 2] (codes packed by :func:`pack_int4`), ``scale`` and ``offset``
    fp32 [n, k / group_size], ``zero`` (the codes' zero points when built from them, else None: only
    :meth:`dequantize` reads it, to return exactly ``(q - zero) * scale``), ``bias`` fp32 or None.
    """

    kernel_weight_type = W_I4
    kernel_rows = (NO_ROW_LIMIT, NO_ROW_LIMIT)

    def __init__(self, packed: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group_size: int,
                 bias: torch.Tensor | None = None, zero: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, half = packed.shape
        self.in_features = 2 * half
        if group_size % INT4_SEGMENT or self.in_features % group_size:
            raise ValueError(f"int4 group_size must be a multiple of {INT4_SEGMENT} that divides the layer's "
                             f"{self.in_features} inputs, got {group_size}")
        groups = (self.out_features, self.in_features // group_size)
        for name, t in (("scale", scale), ("offset", offset), ("zero", zero)):
            if t is not None and tuple(t.shape) != groups:
                raise ValueError(f"int4 {name} must have shape {groups} (out, in / group_size), got {tuple(t.shape)}")
        self.group_size = group_size
        self.register_buffer("weight", packed.to(torch.uint8).contiguous())
        self.register_buffer("scale", scale.detach().float().contiguous())
        self.register_buffer("offset", offset.detach().float().contiguous())
        self.register_buffer("zero", None if zero is None else zero.detach().float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, group_size: int,
                       bias: torch.Tensor | None = None) -> "Int4Linear":
        """From codes q uint8 [out, in] (0..15), scales fp32 [out, in / group_size] and zero points of the
        same shape (None: 8, symmetric): w = (q - zero) * scale."""
        if q.dim() != 2 or q.shape[1] % INT4_SEGMENT:
            raise ValueError(f"int4 codes must be [out, in] with in a multiple of {INT4_SEGMENT}, got {tuple(q.shape)}")
        if int(q.max()) > 15 or int(q.min()) < 0:
            raise ValueError("int4 codes must lie in 0..15")
        scales = scales.float()
        zeros = torch.full_like(scales, 8.0) if zeros is None else zeros.float()
        return cls(pack_int4(q), scales, -zeros * scales, group_size, bias, zeros)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = 128,
                   symmetric: bool = False) -> "Int4Linear":
        """Round-to-nearest (:func:`quantize_rtn_int4`) of a float weight [out, in]."""
        q, scales, zeros = quantize_rtn_int4(weight, group_size, symmetric)
        return cls.from_quantized(q, scales, zeros, group_size, bias)

    def codes(self) -> torch.Tensor:
        """uint8 codes [out, in] (0..15)."""
        return unpack_int4(self.weight)

    def dequantize(self) -> torch.Tensor:
        """The fp32 weight [out, in] (the torch reference every path multiplies by)."""
        q = self.codes().float().reshape(self.out_features, -1, self.group_size)
        if self.zero is not None:
            w = (q - self.zero[..., None]) * self.scale[..., None]
        else:
            w = q * self.scale[..., None] + self.offset[..., None]
        return w.reshape(self.out_features, self.in_features)

    bf16_products = True
    # below 256 rows rounding the dequantised fp32 weight to bf16 costs more than the bf16 kernels save
    # (measured 2026-12-03, before the int4 kernel's faster tiles)
    bf16_kernel_rows = 255

    def _dense(self) -> torch.Tensor:
        # long prefills multiply by the fp32 weight: made in one C pass when the kernel reads this layer
        # (code * scale + offset: equal to dequantize() up to one fp32 rounding of zero-point layers)
        spec = self._spec()
        return dequantize_int4(spec) if spec is not None else self.dequantize()

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        # the kernel's int8 rounding (its layers have in_features % 64 == 0), so every path agrees
        return round_activations_int8(x) if self.in_features % ACTIVATION_BLOCK == 0 else x.float()

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 groups of {self.group_size}"


def _swap_linears(model: nn.Module, make) -> nn.Module:
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(mod))
    return model


@torch.no_grad()
def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear (the output head too; a tied embedding stays fp32 for lookups) with an
    :class:`Int8Linear`, in place. The model should be fp32."""
    return _swap_linears(model, lambda m: Int8Linear(m.weight, m.bias))


@torch.no_grad()
def quantize_int4(model: nn.Module, group_size: int = 128, symmetric: bool = False,
                  skip: tuple[str, ...] = ("lm_head",)) -> nn.Module:
    """Replace every nn.Linear whose input width is a multiple of ``group_size`` with a round-to-nearest
    :class:`Int4Linear`, in place. Layers named in ``skip`` (the output head, by
    default: int4 there costs the most quality per byte saved) become :class:`Int8Linear` instead."""
    def make(name: str, m: nn.Linear) -> nn.Module:
        if name.rpartition(".")[2] in skip or m.in_features % group_size:
            return Int8Linear(m.weight, m.bias)
        return Int4Linear.from_float(m.weight, m.bias, group_size=group_size, symmetric=symmetric)

    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, mod))
    return model


@torch.no_grad()
def optimise_for_decode(model: nn.Module) -> nn.Module:
    """For a bf16 model: bf16 weights, fp32 compute. Every nn.Linear becomes a :class:`BF16Linear`
    (weights stay bf16: half the bytes to read per token) and the few remaining parameters (norms,
    the input embedding) go back to fp32, so activations, the KV cache and all small ops run in fp32,
    which CPUs without native bf16 do much faster. fp32 models are left as they are."""
    if next(model.parameters()).dtype != torch.bfloat16:
        return model
    _swap_linears(model, lambda m: BF16Linear(m.weight, m.bias))
    for p in model.parameters():
        p.data = p.data.float()
    return model
