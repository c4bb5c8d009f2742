"""LoRA (low-rank adapters), our own small module rather than ``peft``.

Why our own: the model fuses Q|K|V and gate|up into single ``nn.Linear`` layers, and checkpoints
are exported in the Qwen2 layout by splitting them; a 40-line adapter that merges back into those
fused weights before export keeps that path unchanged, adds no dependency, and keeps FSDP/DDP
wrapping and our checkpoint format as they are.

``W x + (alpha / r) * B (A x)`` with A ~ N(0, 1/r)-ish (Kaiming) and B = 0, so training starts
from the base model exactly. The base weight is frozen; only A and B (and nothing else) train.

Q-LoRA (``lora.base`` int8 / int4): the frozen base of every adapted layer is first rounded to an
:class:`~openqwen.infer.quant.Int8Linear` / :class:`~openqwen.infer.quant.Int4Linear` and stays so
while training: the forward runs the quantised layer, the backward multiplies the output gradient by
its dequantised weight (one layer at a time, never kept), so the base costs 1 or 0.5 bytes per weight
instead of 4. The adapters stay fp32. Exporting merges them into the dequantised base;
:mod:`openqwen.train.peft_export` writes them in the PEFT layout instead.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoRASection

BASE_PRECISIONS = ("float", "int8", "int4")


def is_quantized(layer: nn.Module) -> bool:
    """A frozen int8/int4 layer (it has a dequantised weight, ``_dense``, and no float ``weight``)."""
    return hasattr(layer, "_dense") and not layer.weight.is_floating_point()


class _FrozenQuantizedLinear(torch.autograd.Function):
    """y = layer(x) for a frozen quantised layer, differentiable in x: dL/dx = dL/dy @ W (dequantised on
    the way back, so no float copy of the base outlives one layer's backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:  # noqa: ANN001
        ctx.layer = layer
        with torch.no_grad():
            return layer(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        w = ctx.layer._dense()
        return (grad.float() @ w).to(grad.dtype), None


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        # adapters in the base's float dtype; fp32 over a quantised base
        dtype = torch.float32 if is_quantized(base) else base.weight.dtype
        device = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=dtype, device=device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.register_buffer("lora_scale", torch.tensor(alpha / rank), persistent=True)
        self.dropout = nn.Dropout(dropout)

    def base_weight(self) -> torch.Tensor:
        """The frozen base weight as a float tensor (dequantised for Q-LoRA)."""
        return self.base._dense() if is_quantized(self.base) else self.base.weight

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (e.g. tying) sees the merged weight
        return self.base_weight() + self.lora_scale * self.lora_b @ self.lora_a

    @property
    def bias(self) -> torch.Tensor | None:  # code that reads a linear's .bias (the engine's fused step) sees it
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_quantized(self.base):
            y = _FrozenQuantizedLinear.apply(x, self.base) if torch.is_grad_enabled() else self.base(x)
        else:
            y = self.base(x)
        return y + self.lora_scale * F.linear(F.linear(self.dropout(x), self.lora_a.to(x.dtype)),
                                              self.lora_b.to(x.dtype))


def quantize_base(layer: nn.Linear, base: str, group_size: int) -> nn.Module:
    """``layer`` rounded to nearest as the frozen base of a Q-LoRA adapter (``base`` int8 or int4)."""
    from ..infer.quant import Int4Linear, Int8Linear  # noqa: PLC0415 (the quantised layers live with inference)

    w = layer.weight.detach().float()
    bias = None if layer.bias is None else layer.bias.detach().float()
    if base == "int8":
        return Int8Linear(w, bias)
    if group_size % 32 or layer.in_features % group_size:
        raise ValueError(f"lora.base_group_size {group_size} must be a multiple of 32 that divides every adapted "
                         f"layer's inputs ({layer.in_features} here)")
    return Int4Linear.from_float(w, bias, group_size=group_size, symmetric=False)


def apply_lora(model: nn.Module, cfg: LoRASection) -> list[str]:
    """Replace the target linears of every block by adapters and freeze everything else; returns the
    names of the wrapped layers."""
    if cfg.rank <= 0:
        return []
    if cfg.base not in BASE_PRECISIONS:
        raise ValueError(f"lora.base must be one of {', '.join(BASE_PRECISIONS)}, got {cfg.base!r}")
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for attr in cfg.targets:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Linear) or (child is not None and is_quantized(child)):
                if cfg.base != "float" and isinstance(child, nn.Linear):
                    child = quantize_base(child, cfg.base, cfg.base_group_size)
                setattr(module, attr, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped.append(f"{name}.{attr}")
    if not wrapped:
        raise ValueError(f"lora.targets {cfg.targets} matched no linear layer")
    return wrapped


def dequantized_base(state: dict[str, torch.Tensor], prefix: str) -> torch.Tensor:
    """The float weight of the frozen base at ``prefix + ".base"`` of a state dict (int8: per-row scale;
    int4: the packed codes of :class:`~openqwen.infer.quant.Int4Linear` with their scale and offset)."""
    w = state[prefix + ".base.weight"]
    if w.is_floating_point():
        return w.float()
    scale = state[prefix + ".base.scale"].float()
    if w.dtype == torch.int8:
        return w.float() * scale[:, None]
    from ..infer.quant import unpack_int4  # noqa: PLC0415

    q = unpack_int4(w).float()
    rows, cols = q.shape
    q = q.view(rows, scale.shape[1], -1)
    zero = state.get(prefix + ".base.zero")
    if zero is not None:  # built from codes and zero points: exactly (q - zero) * scale, as Int4Linear.dequantize
        return ((q - zero.float()[..., None]) * scale[..., None]).reshape(rows, cols)
    return (q * scale[..., None] + state[prefix + ".base.offset"].float()[..., None]).reshape(rows, cols)


_QUANTIZED_LEAVES = ("scale", "offset", "zero")


def merge_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with adapters -> the plain model's state dict (``W + scale * B @ A``; a Q-LoRA base
    dequantised first, so the result is a float model)."""
    if not any(k.endswith(".lora_a") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.endswith((".lora_a", ".lora_b", ".lora_scale")):
            continue
        if ".base." in key:
            prefix, _, leaf = key.rpartition(".base.")
            if leaf in _QUANTIZED_LEAVES and prefix + ".lora_a" in state:
                continue
            if leaf == "weight":
                a, b = state[prefix + ".lora_a"].float(), state[prefix + ".lora_b"].float()
                value = dequantized_base(state, prefix) + state[prefix + ".lora_scale"].float() * (b @ a)
            out[f"{prefix}.{leaf}"] = value
        else:
            out[key] = value
    return out
