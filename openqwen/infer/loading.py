"""Loading a model for generation: one helper and one precision vocabulary for every verb.

``generate``, ``chat``, ``serve`` and ``eval`` all load through :func:`load_for_inference`.
"""

from __future__ import annotations

from pathlib import Path

from ..checkpoint import load_model
from ..model import Qwen


def load_for_inference(path: str | Path, dtype: str = "fp32") -> Qwen:
    """Load a model for generation in fp32, bf16 or int8 (weight-only int8 linears on fp32 activations)."""
    if dtype not in ("fp32", "bf16", "int8"):
        raise ValueError(f"dtype must be fp32, bf16 or int8, got {dtype!r}")
    model = load_model(path, dtype={"fp32": "fp32", "bf16": "bf16", "int8": "fp32"}[dtype])
    from .quant import optimise_for_decode, quantize_int8  # noqa: PLC0415

    if dtype == "int8":
        quantize_int8(model)
    else:
        optimise_for_decode(model)
    return model.eval()
