"""LoRA adapters in the PEFT layout, which the ``peft`` library loads onto transformers' Qwen2 model.

A PEFT LoRA folder is ``adapter_config.json`` + ``adapter_model.safetensors`` holding, for every
adapted linear of transformers' model, ``base_model.model.<module>.lora_A.weight`` [r, in] and
``...lora_B.weight`` [out, r], applied as ``W x + (lora_alpha / r) * B A x``.

Our adapters sit on fused layers (Q|K|V, gate|up). A fused adapter's update ``B A`` splits exactly by
output rows: q_proj gets ``(A, B[q rows])``, k_proj ``(A, B[k rows])`` ..., the same rank and scale, so
the PEFT adapter computes exactly what ours does. The row split is the checkpoint's own
(:data:`openqwen.checkpoint.hf.QWEN2_NAMES`), so the adapter's module names are the base folder's.

Under Q-LoRA (``lora.base`` int8/int4) the adapters were trained on the rounded base, so the folder
gets that base too, dequantised, as a Qwen2 float folder in ``base/``: ``peft`` on top of it
reproduces the trained model (the float original would differ by the rounding).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..checkpoint import save_model
from ..checkpoint.common import atomic_write_text, build_model
from ..checkpoint.hf import QWEN2_NAMES
from ..config import QwenConfig
from .lora import merge_lora_state

ADAPTER_DIR = "adapter"
"""The subfolder of an exported model that holds its adapters in the PEFT layout."""
BASE_DIR = "base"
"""Under :data:`ADAPTER_DIR`: the dequantised base of a Q-LoRA run (absent for float LoRA)."""


def adapter_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """The adapted layers of a state dict (``layers.0.self_attn.qkv_proj`` ...), in order."""
    return [k.removesuffix(".lora_a") for k in state if k.endswith(".lora_a")]


def peft_tensors(state: dict[str, torch.Tensor], config: QwenConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(adapter_model.safetensors tensors, {"r", "lora_alpha", "target_modules"}) from a state dict
    with our adapters (``PREFIX.lora_a`` [r, in], ``PREFIX.lora_b`` [out, r], ``PREFIX.lora_scale``)."""
    plan = QWEN2_NAMES.plan(config)
    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas, targets = set(), set(), set()
    for prefix in adapter_prefixes(state):
        parts = plan.get(prefix + ".weight")
        if parts is None:
            raise ValueError(f"{prefix} has an adapter but no place in the Qwen2 layout")
        a, b = state[prefix + ".lora_a"].detach().float(), state[prefix + ".lora_b"].detach().float()
        rank = a.shape[0]
        ranks.add(rank)
        alphas.add(round(float(state[prefix + ".lora_scale"]) * rank, 6))
        pieces = b.split([shape[0] for _, shape in parts])
        for (name, _), piece in zip(parts, pieces):
            module = name.removesuffix(".weight")
            tensors[f"base_model.model.{module}.lora_A.weight"] = a.clone().contiguous()
            tensors[f"base_model.model.{module}.lora_B.weight"] = piece.clone().contiguous()
            targets.add(module.rpartition(".")[2])
    if not tensors:
        raise ValueError("the model has no LoRA adapters to write")
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"the PEFT layout has one rank and alpha per adapter; found ranks {sorted(ranks)}, "
                         f"alphas {sorted(alphas)}")
    return tensors, {"r": ranks.pop(), "lora_alpha": alphas.pop(), "target_modules": sorted(targets)}


def _is_quantized_base(state: dict[str, torch.Tensor], prefix: str) -> bool:
    return not state[prefix + ".base.weight"].is_floating_point()


def write_peft_adapter(state: dict[str, torch.Tensor], config: QwenConfig, folder: str | Path,
                       base_model: str | None = None) -> Path:
    """Write the adapters of ``state`` (a training model's full state dict) as a PEFT LoRA folder; a
    quantised base is written (dequantised) to ``folder/base``. ``base_model``: recorded as
    ``base_model_name_or_path`` for a float base (the folder training started from)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors, lora = peft_tensors(state, config)
    prefixes = adapter_prefixes(state)
    if any(_is_quantized_base(state, p) for p in prefixes):
        base_state = dict(state)
        for p in prefixes:
            base_state[p + ".lora_b"] = torch.zeros_like(state[p + ".lora_b"])
        base = build_model(config.replace(dropout=0.0), merge_lora_state(base_state), torch.float32)
        save_model(base, folder / BASE_DIR)
        base_model = str((folder / BASE_DIR).resolve())
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": lora["r"], "lora_alpha": lora["lora_alpha"], "lora_dropout": 0.0, "target_modules": lora["target_modules"],
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "use_rslora": False, "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
    }
    tmp = folder / "adapter_model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(folder / "adapter_model.safetensors")
    atomic_write_text(folder / "adapter_config.json", json.dumps(adapter_config, indent=2) + "\n")
    return folder

