"""The independent reference that model tests compare against: transformers' Qwen2ForCausalLM
holding the same weights, and a way to make random weights that hide no mapping mistakes.

Importable from every test folder (pytest puts tests/ on sys.path through its conftest.py)."""

from __future__ import annotations

import torch

from openqwen import Qwen
from openqwen.checkpoint import hf_state_from_model


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
    hf_config = transformers.Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, max_position_embeddings=c.max_position_embeddings,
        attn_implementation="eager",
    )
    hf = transformers.Qwen2ForCausalLM(hf_config).eval()
    missing, unexpected = hf.load_state_dict(hf_state_from_model(model), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"}, missing
    if c.tie_word_embeddings:
        hf.tie_weights()
    return hf
