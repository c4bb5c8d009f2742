"""The model against an independent reference: transformers' Qwen2ForCausalLM on the same weights.

Saving and loading are tested in tests/checkpoint/."""

from __future__ import annotations

import pytest
import torch

from openqwen import Qwen, QwenConfig, get_preset

transformers = pytest.importorskip("transformers")

from hf_reference import hf_twin, randomise  # noqa: E402  (after the importorskip)

TINY_CONFIGS = {
    "mha-untied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa-tied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "mqa-untied-theta": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                             rope_theta=1e6),
    "gqa-head24-eps-theta": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-5,
                                 rope_theta=31337.0),
}


def tiny_config(**kw) -> QwenConfig:
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, seq_length=64,
                max_position_embeddings=256)
    base.update(kw)
    return QwenConfig(**base)


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_full_forward_matches_transformers(name):
    torch.manual_seed(0)
    model = randomise(Qwen(tiny_config(**TINY_CONFIGS[name]))).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, 97, (2, 19))
    with torch.no_grad():
        ours = model(ids)
        ref = hf(ids).logits
    assert ours.shape == (2, 19, 97)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", TINY_CONFIGS)
def test_cached_decoding_matches_transformers(name):
    torch.manual_seed(1)
    model = randomise(Qwen(tiny_config(**TINY_CONFIGS[name])), seed=1).eval()
    hf = hf_twin(model)
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ref = hf(ids).logits
        cache = model.new_cache(batch_size=2, max_length=32)
        steps = [model(ids[:, :5], cache=cache)]  # prefill 5, then one token at a time
        for t in range(5, 12):
            steps.append(model(ids[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, atol=1e-4, rtol=0)
    assert cache.lengths.tolist() == [12, 12]


def test_rows_of_different_lengths_share_a_cache_without_position_shift():
    """Right-padded batched prefill + per-row lengths == each sequence alone (no left-padding bug)."""
    torch.manual_seed(2)
    model = randomise(Qwen(tiny_config(num_key_value_heads=2)), seed=2).eval()
    a, b = torch.randint(0, 97, (1, 9)), torch.randint(0, 97, (1, 4))
    with torch.no_grad():
        solo_a = model(a)[0, -1]
        solo_b = model(b)[0, -1]
        cache = model.new_cache(batch_size=2, max_length=32)
        padded = torch.zeros(2, 9, dtype=torch.long)
        padded[0], padded[1, :4] = a[0], b[0]
        logits = model(padded, cache=cache)
        cache.lengths -= torch.tensor([0, 5])  # row 1 had 5 pad tokens
        torch.testing.assert_close(logits[0, -1], solo_a, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1, 3], solo_b, atol=1e-5, rtol=0)
        # decode one more token per row: rows now sit at different lengths (9 and 4)
        nxt = torch.tensor([[5], [7]])
        step = model(nxt, cache=cache)
        torch.testing.assert_close(step[0, 0], model(torch.cat([a, nxt[:1]], 1))[0, -1], atol=1e-5, rtol=0)
        torch.testing.assert_close(step[1, 0], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-5, rtol=0)


def test_segment_ids_keep_attention_inside_each_document():
    torch.manual_seed(3)
    model = randomise(Qwen(tiny_config()), seed=3).eval()
    a, b = torch.randint(0, 97, (1, 6)), torch.randint(0, 97, (1, 5))
    packed = torch.cat([a, b], dim=1)
    segments = torch.tensor([[0] * 6 + [1] * 5])
    positions = torch.tensor([list(range(6)) + list(range(5))])
    with torch.no_grad():
        out = model(packed, positions=positions, segment_ids=segments)
        torch.testing.assert_close(out[:, :6], model(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, 6:], model(b), atol=1e-5, rtol=0)


def test_a_model_built_on_meta_is_not_initialised(monkeypatch):
    """Loaders build the skeleton on meta; nothing may initialise it (and nothing is patched for it)."""
    def refuse(*args, **kwargs):
        raise AssertionError("random init ran on the meta device")

    monkeypatch.setattr(Qwen, "init_weights", refuse)
    monkeypatch.setattr(torch.nn.init, "normal_", refuse)  # nn.Embedding's own reset
    with torch.device("meta"):
        model = Qwen(tiny_config(tie_word_embeddings=True))
    assert all(p.is_meta for p in model.parameters())
    assert model.lm_head.weight is model.embed_tokens.weight


def test_bf16_forward_is_close_to_fp32():
    torch.manual_seed(6)
    model = randomise(Qwen(tiny_config()), seed=6).eval()
    ids = torch.randint(0, 97, (1, 16))
    with torch.no_grad():
        ref = model(ids)
        low = model.to(torch.bfloat16)(ids)
    assert low.dtype == torch.bfloat16
    assert (low.float().argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    torch.testing.assert_close(low.float(), ref, atol=0.1, rtol=0.05)


def test_init_follows_the_release():
    model = Qwen(get_preset("nano-10m"))
    L = model.config.num_hidden_layers
    assert abs(model.layers[0].mlp.down_proj.weight.std().item() - 0.02 / (2 * L) ** 0.5) < 2e-4
    assert abs(model.layers[0].self_attn.qkv_proj.weight.std().item() - 0.02) < 5e-4
    assert torch.all(model.layers[0].self_attn.qkv_proj.bias == 0)
    assert model.num_parameters == model.config.num_parameters


def test_presets_have_paper_shapes():
    c = get_preset("qwen-7b")
    assert (c.hidden_size, c.num_attention_heads, c.num_hidden_layers, c.head_dim) == (4096, 32, 32, 128)
    assert abs(c.num_parameters / 1e9 - 7.7) < 0.1  # the released 7B counts 7.72B with its 151936-row tables
    c = get_preset("qwen2.5-0.5b")
    assert (c.num_key_value_heads, c.head_dim, c.tie_word_embeddings) == (2, 64, True)
    assert abs(c.num_parameters / 1e6 - 494) < 2  # Qwen2.5-0.5B: 0.49B
    for name, target in (("nano-1m", 1e6), ("nano-10m", 1e7), ("nano-50m", 5e7)):
        assert 0.5 < get_preset(name).num_parameters / target < 1.6, name


def test_bad_config_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        QwenConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("qwen-9000b")
