"""The independent reference that model tests compare against: transformers' Qwen2ForCausalLM
holding the same weights, and a way to make random weights that hide no mapping mistakes.

Importable from every test folder (pytest puts tests/ on sys.path through its conftest.py)."""

from __future__ import annotations

import torch

from openqwen import Qwen
from openqwen.checkpoint import hf_state_from_model, transformers_config


def randomise(model: Qwen, seed: int = 0) -> Qwen:
    """Random non-zero biases and norm weights, so a mapping mistake cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_twin(model: Qwen):
    """transformers' Qwen2ForCausalLM with this model's weights (eager attention, eval mode)."""
    import transformers

    c = model.config
    hf_config = transformers_config(c, attn_implementation="eager")
    hf = transformers.Qwen2ForCausalLM(hf_config).eval()
    missing, unexpected = hf.load_state_dict(hf_state_from_model(model), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    if c.tie_word_embeddings:
        hf.tie_weights()
    return hf
