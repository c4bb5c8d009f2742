"""The fused C decode step equals the torch model's decode step, for every weight precision."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, assert_fused_step_equals_torch, tiny_model

from openqwen.infer import kernels
from openqwen.infer.engine import Engine
from openqwen.infer.kernels import FusedDecoder
from openqwen.infer.quant import optimise_for_decode, quantize_int4, quantize_int8
from openqwen.infer.sampling import SamplingParams

pytestmark = pytest.mark.skipif(kernels.load_kernels() is None, reason=f"C kernels: {kernels.kernel_status()}")

PRECISIONS = {
    "fp32": lambda m: m,
    "bf16": lambda m: optimise_for_decode(m.to(torch.bfloat16)),
    "int8": quantize_int8,
    "int4": lambda m: quantize_int4(m, group_size=32),
}


@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_fused_step_equals_model_step(precision, kv_heads):
    model = PRECISIONS[precision](tiny_model(seed=3, kv_heads=kv_heads, qkv_bias=True)).eval()
    rows, row0, prompt_lens = 5, 1, [7, 1, 12]  # three sequences of different lengths in rows 1..3
    cache_ref, cache_fused = model.new_cache(rows, 32), model.new_cache(rows, 32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for cache in (cache_ref, cache_fused):  # the same prefill (torch) into both caches
            for i, n in enumerate(prompt_lens):
                view = cache.rows(row0 + i, row0 + i + 1)
                model.hidden_states(torch.randint(0, 259, (1, n), generator=torch.Generator().manual_seed(i)),
                                    cache=view)
        fused = FusedDecoder.build(model, cache_fused)
        assert fused is not None, FusedDecoder.why_not
        for _ in range(4):  # a few decode steps: each writes the cache the next one reads
            ids = torch.randint(0, 259, (3, 1), generator=gen)
            ref = model.hidden_states(ids, cache=cache_ref.rows(row0, row0 + 3))
            out = fused.hidden_states(ids, row0=row0)
            torch.testing.assert_close(out, ref, atol=2e-4, rtol=2e-4)
            torch.testing.assert_close(fused.logits(out[:, 0]), model.lm_head(ref[:, 0]).float(), atol=2e-3, rtol=2e-4)
            assert torch.equal(cache_fused.lengths, cache_ref.lengths)
    for layer in range(model.config.num_hidden_layers):
        torch.testing.assert_close(cache_fused.keys[layer], cache_ref.keys[layer], atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(cache_fused.values[layer], cache_ref.values[layer], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("precision", list(PRECISIONS))
def test_engine_greedy_is_the_same_with_and_without_the_fused_step(precision):
    params = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
    prompts = ["hello world", "abc", "the quick brown fox jumps"]
    outs = {}
    for fused in (True, False):
        model = PRECISIONS[precision](tiny_model(seed=5))
        engine = Engine(model, ByteTokenizer(), max_batch_size=4, max_seq_len=64, fused=fused, background=False)
        outs[fused] = [c.token_ids for c in engine.generate(prompts, params)]
        assert ("fused C" in engine.fused_status) == fused, engine.fused_status
    assert outs[True] == outs[False]


def test_fused_decoder_refuses_what_it_cannot_run():
    model = tiny_model(seed=1).to(torch.bfloat16)  # bf16 norms and cache: the torch path must decode
    assert FusedDecoder.build(model, model.new_cache(1, 8)) is None
    assert "fp32" in FusedDecoder.why_not
    hooked = tiny_model(seed=1)
    hooked.layers[1].mlp.register_forward_hook(lambda *_: None)  # a probe the fused step would skip
    assert FusedDecoder.build(hooked, hooked.new_cache(1, 8)) is None and "hooks" in FusedDecoder.why_not
    fp32 = tiny_model(seed=1)
    fused = FusedDecoder.build(fp32, fp32.new_cache(1, 4))
    fused.cache.lengths.fill_(4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        fused.hidden_states(torch.zeros(1, 1, dtype=torch.long))


def _rounding_inputs(rows: int, k: int, block: int, qmax: int) -> torch.Tensor:
    """Magnitudes over 12 decades, an all-zero block, and a block whose step is exactly 1 holding
    half-way values (round half to even: 2.5 -> 2, 3.5 -> 4, -0.5 -> -0)."""
    torch.manual_seed(rows * k)
    x = torch.randn(rows, k) * torch.logspace(-6, 6, k)
    x[0, block : 2 * block] = 0.0
    halves = torch.tensor([2.5, 3.5, -0.5, 0.5, -1.5, 126.5, -126.5, float(qmax)])
    x[-1, :block] = halves.repeat(block // len(halves))
    return x


@pytest.mark.parametrize("rows", [1, 3])
def test_kernel_activation_rounding_equals_torch_bit_for_bit(rows):
    """A one-hot weight (code 1, scale 1, offset 0) makes each output one product q * step, so the
    layer's output is the kernel's rounded activation itself: it must equal the torch reference's."""
    from openqwen.infer.quant import (Int4Linear, Int8Linear, pack_int4, round_activations_int8,
                                      round_activations_int16)

    k = 320  # 10 int4 segments (a tail of 2 after a run of 8), 5 int16 blocks
    x = _rounding_inputs(rows, k, 32, 127)
    int4 = Int4Linear(pack_int4(torch.eye(k, dtype=torch.uint8)), torch.ones(k, k // 32), torch.zeros(k, k // 32), 32)
    assert torch.equal(int4(x), round_activations_int8(x))
    int8 = Int8Linear(torch.eye(k), None)
    int8.scale.fill_(1.0)  # codes 127 on the diagonal, scale 1/127: make the weight exactly the identity
    int8.weight.copy_(torch.eye(k, dtype=torch.int8))
    x = _rounding_inputs(rows, k, 64, 32767)
    assert torch.equal(int8(x), round_activations_int16(x))


def test_argmax_rows_picks_what_torch_argmax_picks():
    """The first largest entry of each row, whatever the length (tails past a multiple of 8), ties,
    signed zeros and infinities; a row holding a NaN goes to torch (which ranks NaN highest)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 1003, generator=g)
    x[1, [5, 700]] = 50.0  # a tie: the first
    x[2, 1001] = 60.0  # the maximum in the tail
    x[3] = float("-inf")
    x[4] = 0.0
    x[4, 10] = -0.0  # -0.0 == 0.0: still the first index
    x[5, 3] = float("nan")
    x[6, 1000] = float("inf")
    x[7] = torch.round(torch.randn(1003, generator=g))  # many ties
    assert kernels.argmax_rows(x) == torch.argmax(x, -1).tolist()
    assert kernels.argmax_rows(x[:, :5]) == torch.argmax(x[:, :5], -1).tolist()  # shorter than one vector
    assert kernels.argmax_rows(x.t().contiguous()[:2]) == torch.argmax(x.t()[:2], -1).tolist()


@pytest.mark.parametrize("head_dim", [16, 64, 128])
@pytest.mark.parametrize("kv", ["fp32", "int8"])
@pytest.mark.parametrize("windows,ring", [(None, False), ([29, None], True), ([29, None], False), ([300, None], True)],
                         ids=["full", "window+sinks-ring", "window+sinks-dense", "long-window"])
def test_attention_over_long_contexts_equals_torch(head_dim, kv, windows, ring):
    """The C attention splits each row's visible positions into chunks of 256 (merged by their largest
    scores), walks each chunk as runs of consecutive cache slots in blocks of 32 that every query head of
    the group reads, scores eight keys at a time and then a tail, and sums values 64 columns at a time
    (narrower heads through memory). Rows of 37, 300 and 530 tokens (one to three chunks, blocks and
    tails of every size as they grow over nine steps); a window of 29 with 3 sinks on a ring buffer (a
    wrapping window) and on a dense cache (sinks and window apart); a window of 300 with 3 sinks (a chunk
    holding both); fp32 and int8 caches; head_dim 16, 64 and 128: all equal to the torch step."""
    extra = {"window_sizes": windows, "attention_sinks": 3} if windows else {}
    if kv == "int8":
        extra["kv_cache_dtype"] = "int8"
    model = tiny_model(seed=11, hidden_size=4 * head_dim, max_position_embeddings=1024, **extra).eval()
    assert model.config.head_dim == head_dim
    caches = model.new_cache(3, 560, ring=False), model.new_cache(3, 560, ring=ring)
    assert caches[1].is_ring(0) == ring
    assert_fused_step_equals_torch(model, caches, [37, 300, 530])
