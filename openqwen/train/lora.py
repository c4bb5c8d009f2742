"""LoRA (low-rank adapters), our own small module rather than ``peft``.

Why our own: the model fuses Q|K|V and gate|up into single ``nn.Linear`` layers, and checkpoints
are exported in the Qwen2 layout by splitting them; a 40-line adapter that merges back into those
fused weights before export keeps that path unchanged, adds no dependency, and keeps FSDP/DDP
wrapping and our checkpoint format as they are.

``W x + (alpha / r) * B (A x)`` with A ~ N(0, 1/r)-ish (Kaiming) and B = 0, so training starts
from the base model exactly. The base weight is frozen; only A and B (and nothing else) train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import LoRASection


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype,
                                               device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                               device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.register_buffer("lora_scale", torch.tensor(alpha / rank), persistent=True)
        self.dropout = nn.Dropout(dropout)

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (e.g. tying) sees the merged weight
        return self.base.weight + self.lora_scale * self.lora_b @ self.lora_a

    @property
    def bias(self) -> torch.Tensor | None:  # code that reads a linear's .bias (the engine's fused step) sees it
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_scale * F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b)


def apply_lora(model: nn.Module, cfg: LoRASection) -> list[str]:
    """Replace the target linears of every block by adapters and freeze everything else; returns the
    names of the wrapped layers."""
    if cfg.rank <= 0:
        return []
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for attr in cfg.targets:
            child = getattr(module, attr, None)
            if isinstance(child, nn.Linear):
                setattr(module, attr, LoRALinear(child, cfg.rank, cfg.alpha, cfg.dropout))
                wrapped.append(f"{name}.{attr}")
    if not wrapped:
        raise ValueError(f"lora.targets {cfg.targets} matched no linear layer")
    return wrapped


def merge_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with adapters -> the plain model's state dict (``W + scale * B @ A``)."""
    if not any(k.endswith(".lora_a") for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.endswith((".lora_a", ".lora_b", ".lora_scale")):
            continue
        if ".base." in key:
            prefix, _, leaf = key.rpartition(".base.")
            if leaf == "weight":
                a, b = state[prefix + ".lora_a"].float(), state[prefix + ".lora_b"].float()
                value = value.float() + state[prefix + ".lora_scale"].float() * (b @ a)
            out[f"{prefix}.{leaf}"] = value
        else:
            out[key] = value
    return out
