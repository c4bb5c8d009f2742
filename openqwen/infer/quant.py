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
bf16). Prefill (many rows) is compute-bound and uses torch's matmul on the dequantised weight.
The generation engine goes further at decode time and runs whole decode steps in C
(:class:`openqwen.infer.kernels.FusedDecoder`) over these same modules.

The model file knows nothing of this: quantisation replaces ``nn.Linear`` modules after loading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels import KERNEL_ROW_CHUNK, W_BF16, W_I8, kernel_status, linear_forward, linear_spec, load_kernels  # noqa: F401

ACTIVATION_BLOCK = 64
"""int8 layers round activations to int16 in blocks of this many inputs (must match QBLK in kernels.c)."""


def round_activations_int16(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] (K % ACTIVATION_BLOCK == 0) rounded as the int8 kernel rounds it: per block of 64,
    scale = absmax / 32767, q = round-half-even(x / scale) clamped to +-32767, returned as q * scale."""
    shape = x.shape
    xb = x.float().reshape(-1, shape[-1] // ACTIVATION_BLOCK, ACTIVATION_BLOCK)
    scale = xb.abs().amax(-1, keepdim=True) / 32767.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    q = torch.round(xb * inv).clamp_(-32767, 32767)
    return (q * scale).reshape(shape)


MAX_KERNEL_ROWS = 384
"""Up to this many rows (decode, and prefills of short prompts) run through the C kernel, in chunks of
KERNEL_ROW_CHUNK rows whose rounded activations stay in the L2 cache. On the 2-core benchmark machine
(Qwen2.5-0.5B, int8) that prefills 128 tokens in 2.0 s against 4.8 s for torch's matmul on weights
dequantised at every call, 256 in 3.5 s against 5.6 s; from about 400 rows up the matmul wins
(512: 7.2 s against 8.3 s), its dequantisation spread over many rows."""


class _KernelLinear(nn.Module):
    """Shared forward: small batches through the C kernel, large ones through torch."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None
    _spec_cache: tuple | None = None

    def _dense(self) -> torch.Tensor:  # fp32 weight for torch's matmul
        raise NotImplementedError

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
        spec = self._spec() if x2.shape[0] <= MAX_KERNEL_ROWS else None
        if spec is not None:
            xf = x2.float().contiguous()
            parts = [linear_forward(spec, xf[i : i + KERNEL_ROW_CHUNK], self.out_features)
                     for i in range(0, xf.shape[0], KERNEL_ROW_CHUNK)]
            y = torch.cat(parts) if parts else xf.new_empty(0, self.out_features)
        elif x2.shape[0] > MAX_KERNEL_ROWS:
            y = F.linear(self._prepare_input(x2), self._dense(), None if self.bias is None else self.bias.float())
        else:
            y = self._fallback(self._prepare_input(x2))
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Int8Linear(_KernelLinear):
    """y = x @ (int8 W * per-row scale)^T + b, with fp32 activations."""

    kernel_weight_type = W_I8  # what :func:`openqwen.infer.kernels.linear_spec` reads

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        self.out_features, self.in_features = w.shape
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def _dense(self) -> torch.Tensor:
        return self.weight.float() * self.scale[:, None]

    def _prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        # the kernel's int16 rounding, so that prefill and the fallback compute what decode computes
        return round_activations_int16(x) if self.in_features % ACTIVATION_BLOCK == 0 else x.float()

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.float().contiguous(), self.weight, self.scale)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


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
