"""The one loading entry, :func:`load_model` (the format is recognised from the path), and
:func:`save_model`, which writes the Qwen2 layout that transformers, vLLM and llama.cpp's converter take.

Reads
  1. a Hugging Face folder in the Qwen2 layout (``Qwen2ForCausalLM``), openqwen's own output included
     (:mod:`.hf`);
  2. a first-generation folder (``QWenLMHeadModel``, :mod:`.v1`);
  3. a ``.gguf`` file of architecture ``qwen2`` or ``qwen`` (:mod:`.gguf`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model import Qwen
from .common import CheckpointError, resolve_dtype
from .gguf import load_gguf
from .hf import load_hf, save_hf
from .v1 import load_v1


def load_model(path: str | Path, dtype: torch.dtype | str | None = None,
               device: str | torch.device = "cpu") -> Qwen:
    """Load any supported checkpoint as a :class:`Qwen` in eval mode.

    dtype: a torch dtype or a name (``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``,
    ``"float16"``/``"fp16"``); None or ``"auto"``: the dtype the checkpoint's config asks for, else
    its stored tensors' own (GGUF: float32).
    """
    path = Path(path).expanduser()
    dtype = resolve_dtype(dtype)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path, dtype=dtype, device=device)
    if path.is_file():
        raise CheckpointError(f"{path} is a file; give a model folder or a .gguf file")
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} has no config.json")
    try:
        hf_config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_file} is not a JSON object")
    if "QWenLMHeadModel" in (hf_config.get("architectures") or []) or hf_config.get("model_type") == "qwen":
        return load_v1(path, hf_config, dtype=dtype, device=device)
    return load_hf(path, hf_config, dtype, device)


def save_model(model: Qwen, path: str | Path, max_shard_bytes: int = 4 << 30) -> None:
    """Write config.json and safetensors (sharded past ``max_shard_bytes``) in the Qwen2 layout into
    ``path``, each file atomically."""
    save_hf(model, path, max_shard_bytes=max_shard_bytes)
