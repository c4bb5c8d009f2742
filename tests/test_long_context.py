"""Long-context options of the model against independent references.

References: the release's formulas written out again here (alpha by integer arithmetic, LogN with
math.log), a float64 transformer written in plain torch ops in this file (its own RoPE, masks and
softmax), transformers' RoPE init functions and Qwen2 model (yarn, dynamic, sliding windows)."""

from __future__ import annotations

import math

import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen import long_context as lc

from hf_reference import randomise

S = 8  # training length of the tiny models: every test crosses several alpha buckets in a few dozen tokens


def tiny(**kw) -> QwenConfig:
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, seq_length=S, max_position_embeddings=64)
    base.update(kw)
    return QwenConfig(**base)


def twin(model: Qwen, **options) -> Qwen:
    """The same weights under other config options."""
    other = Qwen(model.config.replace(**options)).eval()
    other.load_state_dict(model.state_dict())
    return other


@pytest.fixture(scope="module")
def plain() -> Qwen:
    torch.manual_seed(0)
    return randomise(Qwen(tiny()), seed=0)


# ------------------------------------------------------------------------------ a float64 reference
def reference_logits(model: Qwen, ids: torch.Tensor, base: float | None = None, logn: bool = False,
                     windows=None, sinks: int = 0) -> torch.Tensor:
    """Logits [T, vocab] of one sequence in float64 from the model's weights, by plain formulas."""
    cfg = model.config
    T, d, H, G = ids.shape[0], cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    base = cfg.rope_theta if base is None else base
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)

    def rot(x):
        return x * cos + torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1) * sin

    def norm(x, w):
        return w.double() * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    pos = torch.arange(T)
    scale = torch.tensor([math.log(p + 1) / math.log(cfg.seq_length) if p + 1 > cfg.seq_length else 1.0
                          for p in range(T)], dtype=torch.float64)
    x = model.embed_tokens.weight.double()[ids]
    for i, blk in enumerate(model.layers):
        a = blk.self_attn
        qkv = norm(x, blk.input_layernorm.weight) @ a.qkv_proj.weight.double().T + a.qkv_proj.bias.double()
        q, k, v = qkv.split([H * d, G * d, G * d], -1)
        q, k, v = (t.view(T, -1, d).transpose(0, 1) for t in (q, k, v))
        q, k = rot(q), rot(k)
        if logn:
            q = q * scale[None, :, None]
        k, v = k.repeat_interleave(H // G, 0), v.repeat_interleave(H // G, 0)
        w = None if windows is None else windows[i]
        allowed = pos[None, :] <= pos[:, None]
        if w is not None:
            allowed &= (pos[:, None] - pos[None, :] < w) | (pos[None, :] < sinks)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(d)
        scores = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        x = x + (scores @ v).transpose(0, 1).reshape(T, H * d) @ a.o_proj.weight.double().T
        h = norm(x, blk.post_attention_layernorm.weight)
        gate, up = (h @ blk.mlp.gate_up_proj.weight.double().T).chunk(2, -1)
        x = x + (torch.nn.functional.silu(gate) * up) @ blk.mlp.down_proj.weight.double().T
    return norm(x, model.norm.weight) @ model.lm_head.weight.double().T


# ------------------------------------------------------------------------------ the formulas
def test_ntk_alpha_is_the_release_formula_on_every_bucket_edge():
    for s in (7, 64, 2048):
        for n in list(range(1, 20 * s, max(1, s // 16))) + [s * 2**k + e for k in range(5) for e in (-1, 0, 1)]:
            if n < 1:
                continue
            k = 0  # smallest k with n <= s * 2^k, by integers: alpha = 2^(k+1) - 1, and 1 up to s
            while n > s * 2**k:
                k += 1
            expected = 1 if n <= s else 2 ** (k + 1) - 1
            assert lc.ntk_alpha(n, s) == expected, (n, s)
    assert [lc.ntk_alpha(n, 2048) for n in (2048, 2049, 4096, 4097, 8192, 8193, 16384)] == [1, 3, 3, 7, 7, 15, 15]


def test_logn_factors_are_log_p_plus_1_base_s_past_s():
    positions = torch.arange(0, 300)[None]
    got = lc.logn_factors(positions, 100)[0]
    want = torch.tensor([math.log(p + 1) / math.log(100) if p + 1 > 100 else 1.0 for p in range(300)])
    torch.testing.assert_close(got, want.float(), atol=0, rtol=1e-7)
    assert lc.logn_factors(torch.arange(100)[None], 100) is None  # nothing past S: the unscaled path


def test_window_mask_sees_exactly_the_window_and_the_sinks():
    q = torch.arange(20)[None]
    m = lc.window_mask(q, q, window=5, sinks=2)[0, 0]
    for p in range(20):
        for j in range(20):
            assert bool(m[p, j]) == (j <= p and (p - j < 5 or j < 2)), (p, j)


# ------------------------------------------------------------------------------ no-ops up to S
def test_every_option_is_a_bit_exact_no_op_up_to_the_training_length(plain):
    ids = torch.randint(0, 97, (2, S), generator=torch.Generator().manual_seed(1))
    options = twin(plain, use_dynamic_ntk=True, use_logn_attn=True, window_sizes=[S, S + 3, None],
                   attention_sinks=2, rope_update="rotate")
    dynamic = twin(plain, rope_scaling={"rope_type": "dynamic", "factor": 4.0})  # L <= max_position_embeddings
    with torch.no_grad():
        want = plain(ids)
        for model in (options, dynamic):
            assert torch.equal(model(ids), want)
            cache, ref_cache = model.new_cache(2, S), plain.new_cache(2, S)
            got = [model(ids[:, :3], cache=cache)] + [model(ids[:, t : t + 1], cache=cache) for t in range(3, S)]
            ref = [plain(ids[:, :3], cache=ref_cache)] + [plain(ids[:, t : t + 1], cache=ref_cache) for t in range(3, S)]
            assert torch.equal(torch.cat(got, 1), torch.cat(ref, 1))


# ------------------------------------------------------------------------------ past S, full forward
def test_dynamic_ntk_is_rope_at_the_release_base_of_the_true_length(plain):
    ids = torch.randint(0, 97, (3 * S + 2,), generator=torch.Generator().manual_seed(2))  # L = 26: alpha 7
    d = plain.config.head_dim
    base = plain.config.rope_theta * 7 ** (d / (d - 2))
    ntk = twin(plain, use_dynamic_ntk=True)
    with torch.no_grad():
        torch.testing.assert_close(ntk(ids[None])[0].double(), reference_logits(plain, ids, base=base), atol=1e-4, rtol=0)
        assert torch.equal(ntk(ids[None]), twin(plain, rope_theta=base)(ids[None]))


@pytest.mark.parametrize("windows,sinks", [(None, 0), ([4, 9, None], 0), ([4, 9, None], 2)])
def test_logn_and_windows_match_the_float64_reference(plain, windows, sinks):
    ids = torch.randint(0, 97, (4 * S,), generator=torch.Generator().manual_seed(3))
    model = twin(plain, use_logn_attn=True, window_sizes=windows, attention_sinks=sinks)
    with torch.no_grad():
        got = model(ids[None])[0].double()
    torch.testing.assert_close(got, reference_logits(plain, ids, logn=True, windows=windows, sinks=sinks),
                               atol=1e-4, rtol=0)


def test_a_window_of_at_least_the_length_is_full_attention(plain):
    ids = torch.randint(0, 97, (1, 3 * S), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(twin(plain, window_sizes=[3 * S] * 3)(ids), plain(ids))


def test_a_windowed_layer_never_attends_past_its_window():
    torch.manual_seed(5)
    one = randomise(Qwen(tiny(num_hidden_layers=1, window_sizes=[5])), seed=5)
    ids = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        base = one(ids)[0, 15]
        for j in range(20):
            changed = ids.clone()
            changed[0, j] = (changed[0, j] + 1) % 97
            moved = not torch.equal(one(changed)[0, 15], base)
            assert moved == (11 <= j <= 15), j  # position 15 sees 11..15 only


# ------------------------------------------------------------------------------ cached decoding
DECODE_OPTIONS = {
    "ntk-rotate": dict(use_dynamic_ntk=True, rope_update="rotate"),
    "logn": dict(use_logn_attn=True),
    "windows-sinks": dict(window_sizes=[4, 9, None], attention_sinks=2),
    "all-rotate": dict(use_dynamic_ntk=True, use_logn_attn=True, window_sizes=[4, 9, None], attention_sinks=1,
                       rope_update="rotate"),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}),
    "dynamic-rotate": dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=S,
                           rope_update="rotate"),
}


@pytest.mark.parametrize("name", DECODE_OPTIONS)
def test_cached_decoding_equals_a_full_forward_across_alpha_boundaries(plain, name):
    """Prefill 5 tokens, decode to 4S one at a time (alpha 1 -> 3 -> 7); each step's logits equal the
    last position of a full forward over the tokens so far."""
    model = twin(plain, **DECODE_OPTIONS[name])
    ids = torch.randint(0, 97, (1, 4 * S), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cache = model.new_cache(1, 4 * S)
        steps = [model(ids[:, :5], cache=cache)[0, -1]]
        steps += [model(ids[:, t : t + 1], cache=cache)[0, -1] for t in range(5, 4 * S)]
        full = [model(ids[:, : t + 1])[0, -1] for t in range(4, 4 * S)]
    torch.testing.assert_close(torch.stack(steps), torch.stack(full), atol=1e-4, rtol=0)


def test_the_release_keeps_the_prefill_alpha_while_decoding(plain):
    """rope_update="prefill" (the release): a row prefilled within S decodes past it with alpha 1, i.e.
    exactly as unscaled RoPE (with LogN still on), while the next prefill of the grown text uses alpha 3."""
    model = twin(plain, use_dynamic_ntk=True, use_logn_attn=True)
    unscaled = twin(plain, use_logn_attn=True)
    ids = torch.randint(0, 97, (1, 2 * S), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cache = model.new_cache(1, 2 * S)
        steps = [model(ids[:, :S], cache=cache)[0, -1]] + [model(ids[:, t : t + 1], cache=cache)[0, -1]
                                                            for t in range(S, 2 * S)]
        torch.testing.assert_close(torch.stack(steps), unscaled(ids)[0, S - 1 :], atol=1e-5, rtol=0)
        assert cache.rope_bases.tolist() == [plain.config.rope_theta]
        # a multi-token step (a prefill on top of the cache: prefix reuse) re-decides alpha and re-rotates
        cache = model.new_cache(1, 2 * S)
        model(ids[:, :S], cache=cache)
        tail = model(ids[:, S:], cache=cache)[0]
        torch.testing.assert_close(tail, model(ids)[0, S:], atol=1e-4, rtol=0)


def test_rows_of_different_lengths_each_get_their_own_alpha(plain):
    """A right-padded batch (num_tokens) of rows 5, 12 and 30 long (alpha 1, 3, 7) equals each row alone."""
    model = twin(plain, use_dynamic_ntk=True, use_logn_attn=True, window_sizes=[6, None, 12])
    g = torch.Generator().manual_seed(8)
    rows = [torch.randint(0, 97, (n,), generator=g) for n in (5, 12, 30)]
    padded = torch.zeros(3, 30, dtype=torch.long)
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    with torch.no_grad():
        cache = model.new_cache(3, 40)
        out = model(padded, cache=cache, num_tokens=torch.tensor([5, 12, 30]))
        assert cache.lengths.tolist() == [5, 12, 30]
        for i, r in enumerate(rows):
            torch.testing.assert_close(out[i, : len(r)], model(r[None])[0], atol=1e-5, rtol=0)
        nxt = torch.tensor([[3], [4], [5]])  # one decode step at lengths 5, 12, 30: alphas 1, 3, 7 (kept)
        step = model(nxt, cache=cache)[:, 0]
        for i, r in enumerate(rows):
            torch.testing.assert_close(step[i], model(torch.cat([r, nxt[i]])[None])[0, -1], atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ transformers
def _hf_config(model: Qwen, rope: dict):
    transformers = pytest.importorskip("transformers")
    c = model.config
    return transformers.Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim,
        rope_parameters={"rope_theta": c.rope_theta, **rope}, max_position_embeddings=c.max_position_embeddings)


@pytest.mark.parametrize("rope", [
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 16, "beta_slow": 2},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "attention_factor": 1.3},
    {"rope_type": "linear", "factor": 2.5},
])
def test_static_rope_scalings_equal_transformers_init_functions(plain, rope):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model = twin(plain, rope_scaling=rope)
    want, want_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](_hf_config(model, rope), "cpu")
    got, scale = lc.inverse_frequencies(model.config, model.config.rope_theta)
    torch.testing.assert_close(got, want, atol=0, rtol=1e-6)
    assert scale == pytest.approx(want_scale, rel=1e-12)


def test_dynamic_base_equals_transformers_at_every_length(plain):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = {"rope_type": "dynamic", "factor": 3.0}
    model = twin(plain, rope_scaling=rope, max_position_embeddings=16)
    hf = _hf_config(model, rope)
    for n in (1, 16, 17, 40, 100):
        want, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf, "cpu", seq_len=n)
        got, _ = lc.inverse_frequencies(model.config, lc.rope_base(model.config, n))
        torch.testing.assert_close(got, want, atol=0, rtol=1e-6)


@pytest.mark.parametrize("options", [
    dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}, max_position_embeddings=16),
    dict(window_sizes=[None, 7, 7]),
])
def test_full_forward_and_stale_decoding_match_transformers_qwen2(plain, options):
    """transformers' Qwen2 with the same rope_scaling / sliding windows: the full forward, and cached
    generation (dynamic: rope_update "stale", the way transformers leaves cached keys)."""
    transformers = pytest.importorskip("transformers")
    from openqwen.checkpoint import hf_state_from_model, transformers_config

    model = twin(plain, **options, **({"rope_update": "stale"} if "rope_scaling" in options else {}))
    hf = transformers.Qwen2ForCausalLM(transformers_config(model.config, attn_implementation="eager")).eval()
    hf.load_state_dict(hf_state_from_model(model), strict=False)
    ids = torch.randint(0, 97, (1, 40), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=0)
        cache, past = model.new_cache(1, 48), transformers.DynamicCache(config=hf.config)
        ours = [model(ids[:, :10], cache=cache)[0, -1]]
        theirs = [hf(ids[:, :10], past_key_values=past, use_cache=True).logits[0, -1]]
        for t in range(10, 40):
            ours.append(model(ids[:, t : t + 1], cache=cache)[0, -1])
            theirs.append(hf(ids[:, t : t + 1], past_key_values=past, use_cache=True).logits[0, -1])
    torch.testing.assert_close(torch.stack(ours), torch.stack(theirs), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("fields,message", [
    (dict(window_sizes=[4, 4]), "one entry per layer"),
    (dict(window_sizes=[4, 0, 4]), "positive token counts"),
    (dict(attention_sinks=2), "only acts beside windows"),
    (dict(rope_update="sometimes"), "rope_update must be one of"),
    (dict(rope_scaling={"rope_type": "longrope"}), "not implemented"),
    (dict(rope_scaling={"rope_type": "dynamic"}), "needs a factor"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}, use_dynamic_ntk=True), "choose one"),
])
def test_bad_long_context_settings_say_what_to_fix(fields, message):
    with pytest.raises(ValueError, match=message):
        tiny(**fields)
