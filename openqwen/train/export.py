"""Exporting a trained model (and its task's modules) strictly: every trained tensor lands in a file.

The model goes to ``PATH`` in the Hugging Face Qwen2 layout (``config.json``, ``model.safetensors``;
LoRA adapters merged into the weights they adapt, and also written on their own in the PEFT layout to
``PATH/adapter``, see :mod:`.peft_export`). Each module of the task goes to
``PATH/modules/<name>.safetensors`` with its own parameter names (a folder of its own: loaders
that read every ``*.safetensors`` of a model folder, ours and vLLM's, see only the model);
:func:`load_module` reads one back into a freshly built module. Nothing is dropped or filled in
silently: a trained tensor the Qwen layout has no place for, or a weight it needs that training did
not produce, raises ``ValueError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from openqwen.checkpoint import save_model
from openqwen.model import Qwen

from .checkpointing import full_state
from .distributed import DistInfo, unwrap
from .lora import merge_lora_state

MODULES_DIR = "modules"
"""The subfolder of an exported model that holds the task's modules."""


def _strict_load(module: nn.Module, state: dict[str, torch.Tensor], what: str, **kwargs: Any) -> None:
    """``load_state_dict(strict=True)`` whose refusals are a ``ValueError`` naming the misfits."""
    own = module.state_dict()
    expected = set(own)
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    misshapen = [f"{k} {tuple(state[k].shape)} (expected {tuple(own[k].shape)})"
                 for k in sorted(expected & set(state)) if state[k].shape != own[k].shape]
    if misshapen:
        raise ValueError(f"{what} do not match: shapes differ: {', '.join(misshapen[:8])}")
    if missing or unexpected:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}" if missing else "",
            f"unexpected {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "",
        ) if part)
        raise ValueError(f"{what} do not match: {detail}")
    module.load_state_dict(state, strict=True, **kwargs)


def export_model(model: nn.Module, path: str | Path, tokenizer: Any = None, info: DistInfo | None = None,
                 modules: dict[str, nn.Module] | None = None) -> Path | None:
    """Write ``model`` (+ ``tokenizer``, + each of ``modules`` as ``modules/<name>.safetensors``) to ``path``.
    Collective under FSDP (every rank calls it); only rank 0 writes and gets the path back."""
    info = info or DistInfo()
    state, _ = full_state(model, None)
    module_states = {name: full_state(module, None)[0] for name, module in (modules or {}).items()}
    if not info.is_main:
        return None
    path = Path(path)
    bare = unwrap(model)
    adapters = state if any(k.endswith(".lora_a") for k in state) else None
    state = merge_lora_state(state)
    with torch.device("meta"):
        clean = Qwen(bare.config.replace(dropout=0.0))  # a copy: the training model keeps its config
    try:
        _strict_load(clean, {k: v.float() for k, v in state.items()}, "the trained model's state and the "
                     "Qwen layout", assign=True)
    except ValueError as e:
        raise ValueError(f"{e}. Trained tensors outside the Qwen layout belong to a task module "
                         f"(task.modules()), which is exported to its own file") from None
    if bare.config.tie_word_embeddings:  # the state names the tied tensor twice; assign= untied them
        clean.lm_head.weight = clean.embed_tokens.weight
    save_model(clean, path)
    if adapters is not None:  # the adapters on their own too, in the layout peft loads (+ a Q-LoRA base)
        from .peft_export import ADAPTER_DIR, write_peft_adapter  # noqa: PLC0415

        write_peft_adapter(adapters, clean.config, path / ADAPTER_DIR)
    for name, module_state in module_states.items():
        (path / MODULES_DIR).mkdir(exist_ok=True)
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in module_state.items()}
        tmp = path / MODULES_DIR / f"{name}.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "module": name})
        os.replace(tmp, path / MODULES_DIR / f"{name}.safetensors")
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def load_module(path: str | Path, name: str, module: nn.Module) -> nn.Module:
    """Load the exported ``PATH/modules/<name>.safetensors`` into ``module`` (built like the trained
    one); a missing or unexpected tensor raises ``ValueError``."""
    file = Path(path) / MODULES_DIR / f"{name}.safetensors"
    if not file.exists():
        raise FileNotFoundError(f"no exported module {name!r} at {file}")
    _strict_load(module, load_file(str(file)), f"{file} and the {type(module).__name__} it is loaded into")
    return module
