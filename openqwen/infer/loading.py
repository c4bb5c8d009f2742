"""Loading a model for generation: one helper and one precision vocabulary for every verb.

``generate``, ``chat``, ``serve`` and ``eval`` all load through :func:`load_model_and_tokenizer`
(the engine's ``Engine.from_pretrained`` too) and take their ``--model/--tokenizer/--dtype/--threads``
flags from :func:`add_model_arguments`, so they accept the same precisions under the same names:

- ``fp32``: as stored, computed in float32;
- ``bf16``: the linears' weights in bfloat16 (half the bytes to read per token), computed in float32;
- ``int8``: weight-only int8 linears on float32 activations (the fastest CPU decode).

``float32`` and ``bfloat16`` are accepted as spellings of the first two.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import Qwen

# This module imports no torch at import time: the CLIs take their flags from it for ``--help``.

DTYPE_CHOICES = ("fp32", "bf16", "int8")
"""The precisions a model can be loaded in for generation."""

_DTYPE_SPELLINGS = {"float32": "fp32", "bfloat16": "bf16"}

DTYPE_HELP = ("precision: fp32 (default), bf16 (bf16 weights, fp32 compute: half the weight memory), or int8 "
              "(weight-only int8 linears: the fastest CPU decode, slightly different numbers)")


def normalise_dtype(name: str) -> str:
    """``name`` as one of :data:`DTYPE_CHOICES` (``float32`` -> ``fp32``, ``bfloat16`` -> ``bf16``)."""
    key = str(name).strip().lower()
    key = _DTYPE_SPELLINGS.get(key, key)
    if key not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)} (or float32 / bfloat16), got {name!r}")
    return key


def load_for_inference(path: str | Path, dtype: str = "fp32") -> "Qwen":
    """Load a model for generation in fp32, bf16 or int8 (weight-only int8 linears on fp32 activations)."""
    from ..checkpoint import load_model  # noqa: PLC0415
    from .quant import optimise_for_decode, quantize_int8  # noqa: PLC0415

    dtype = normalise_dtype(dtype)
    model = load_model(path, dtype={"fp32": "fp32", "bf16": "bf16", "int8": "fp32"}[dtype])

    if dtype == "int8":
        quantize_int8(model)
    else:
        optimise_for_decode(model)
    return model.eval()


def load_model_and_tokenizer(path: str | Path, dtype: str = "fp32",
                             tokenizer_path: str | Path | None = None) -> tuple["Qwen", Any]:
    """The model in ``dtype`` (see :func:`load_for_inference`) and its tokenizer (from ``tokenizer_path``,
    else stored with the model)."""
    from ..tokenizer import QwenTokenizer  # noqa: PLC0415

    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model {path} does not exist; pass a model folder or a .gguf file")
    if tokenizer_path is not None and not Path(tokenizer_path).expanduser().exists():
        raise FileNotFoundError(f"tokenizer {tokenizer_path} does not exist; pass a tokenizer folder or file")
    model = load_for_inference(Path(path).expanduser(), dtype)
    tokenizer = QwenTokenizer.from_pretrained(Path(tokenizer_path or path).expanduser())
    return model, tokenizer


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch (None: torch's choice)."""
    if threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ command-line flags
def _dtype_flag(text: str) -> str:
    try:
        return normalise_dtype(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every generating verb shares: ``--model``, ``--tokenizer``, ``--dtype``, ``--threads``."""
    parser.add_argument("--model", required=True,
                        help="model folder (openqwen / Hugging Face Qwen2 / first-generation) or .gguf file")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path when it is not stored with the model")
    parser.add_argument("--dtype", default="fp32", type=_dtype_flag, metavar="{" + ",".join(DTYPE_CHOICES) + "}",
                        help=DTYPE_HELP)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
