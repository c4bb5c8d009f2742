"""Running reward normalisation (the report: "rewards normalised by a running mean").

PPO's rewards come from a reward model whose scale drifts as the policy improves; dividing by a
running standard deviation and subtracting a running mean keeps the advantages and the value
targets in a steady range. :class:`RunningMoments` keeps the count, mean and the sum of squared
deviations of every reward seen so far (Chan et al.'s parallel merge of a batch into the totals, in
float64, so the result equals numpy's mean/variance of all rewards at once to rounding), and is
saved and restored with the run, so a resumed run normalises exactly as the uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class RunningMoments:
    """Mean and variance of every value passed to :meth:`update`; :meth:`normalize` applies them.

    ``center``: subtract the mean (False: only divide by the standard deviation, which keeps the sign
    of the reward, as some recipes prefer). ``eps`` guards the division when the variance is ~0.
    """

    def __init__(self, center: bool = True, eps: float = 1e-8) -> None:
        self.center, self.eps = center, eps
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        """Population variance (numpy's ``var`` with ddof=0) of all values seen; 1 before any."""
        return self.m2 / self.count if self.count else 1.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor) -> None:
        """Merge a batch of values into the totals (float64)."""
        x = values.detach().double().flatten().cpu()
        n = int(x.numel())
        if n == 0:
            return
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError("a reward is not finite (nan or inf); check the reward model's output")
        batch_mean = float(x.mean())
        batch_m2 = float(((x - batch_mean) ** 2).sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """``(values - mean) / std`` (no centring when ``center`` is False), in the values' dtype."""
        out = values.double()
        if self.center:
            out = out - self.mean
        return (out / (self.std + self.eps)).to(values.dtype)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "center": self.center, "eps": self.eps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state["center"]) != self.center:
            raise ValueError(f"the checkpoint's reward normaliser has center={state['center']}, this run "
                             f"{self.center}: resume with the same ppo.reward_center")
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
        self.eps = float(state["eps"])
