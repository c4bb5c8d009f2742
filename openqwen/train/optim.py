"""AdamW with the report's settings and the two learning-rate schedules.

- AdamW betas (0.9, 0.95), eps 1e-8; weight decay only on matrices (embeddings and projection
  weights), never on norm weights or biases: decaying a norm gain towards zero only hurts.
- ``cosine``: linear warm-up to the peak, then cosine decay to ``min_lr_ratio`` of the peak at
  ``max_steps`` (pretraining, SFT).
- ``constant``: linear warm-up, then flat (Code-Qwen's continued pretraining, the reward model).

The schedule is a pure function of the step, so resuming needs nothing but the step number.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimSection


def lr_at(step: int, peak: float, warmup: int, max_steps: int, schedule: str = "cosine",
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimiser step ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    decay_steps = max(1, max_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    floor = peak * min_lr_ratio
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and everything else (norms, biases; not decayed).
    Tied parameters are listed once; frozen ones (LoRA base weights) are left out."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimSection) -> torch.optim.AdamW:
    params = next(model.parameters())
    # The fused kernel does the whole update in one pass per tensor (much faster than the
    # per-parameter loop on CPU); DTensors (FSDP2) take the foreach path instead.
    from torch.distributed.tensor import DTensor

    fused = not isinstance(params, DTensor) and params.device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
        fused=fused or None, foreach=None if fused else True,
    )
