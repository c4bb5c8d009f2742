"""Mixing: per-source weights that up-sample and down-sample.

A document of source ``s`` is written ``floor(w)`` times plus once more with probability
``w - floor(w)``, where ``w = weights.get(s, default_weight)``: weight 2 doubles a source, 0.5
keeps half of it, 0 drops it. The coin for each document comes from a hash of (seed, document
text), not from a stream of random numbers, so the outcome is the same however the corpus is
sharded or how many workers run it. The report up-samples chosen high-quality sources this way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import xxhash


@dataclass
class MixConfig:
    """weights: source name -> weight (missing sources get default_weight). seed: coin seed."""

    weights: dict[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name, w in list(self.weights.items()) + [("default", self.default_weight)]:
            if not (w >= 0 and math.isfinite(w)):
                raise ValueError(f"mix weight of {name!r} must be a finite number >= 0, got {w}")


def copies_of(doc: dict[str, Any], config: MixConfig) -> int:
    """How many times ``doc`` is written."""
    w = config.weights.get(doc.get("source", ""), config.default_weight)
    whole = math.floor(w)
    frac = w - whole
    if frac <= 0:
        return whole
    coin = xxhash.xxh64_intdigest(doc["text"].encode("utf-8", "surrogatepass"), seed=config.seed) / 2**64
    return whole + (coin < frac)


def mix_documents(docs: list[dict[str, Any]], config: MixConfig) -> list[list[dict[str, Any]] | str]:
    """For each document the list of its copies, or ``"downsampled"`` when it gets none."""
    out: list[list[dict[str, Any]] | str] = []
    for doc in docs:
        k = copies_of(doc, config)
        out.append([doc] * k if k else "downsampled")
    return out
