"""Group-wise int4 linears: codes and scales round-trip exactly, every path (C kernel, torch fallback,
prefill) equals the dequantised reference, round-to-nearest stays within half a step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from infer_helpers import ByteTokenizer, tiny_model, with_and_without_vnni

from openqwen.infer import quant
from openqwen.infer.engine import Engine
from openqwen.infer.quant import Int4Linear, Int8Linear, pack_int4, quantize_int4, quantize_rtn_int4, unpack_int4
from openqwen.infer.sampling import SamplingParams


def test_packing_round_trips_and_follows_the_segment_order():
    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (3, 32) and torch.equal(unpack_int4(packed), q)
    # byte i of a 32-input segment: input i in the low nibble, input i + 16 in the high nibble
    assert int(packed[1, 5]) == int(q[1, 5]) | int(q[1, 21]) << 4
    assert int(packed[2, 16 + 3]) == int(q[2, 32 + 3]) | int(q[2, 32 + 19]) << 4


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_from_quantized_dequantizes_exactly_as_the_interface_says(symmetric, group_size):
    torch.manual_seed(0)
    w = torch.randn(40, 256)
    q, scales, zeros = quantize_rtn_int4(w, group_size, symmetric)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scales.shape == (40, 256 // group_size)
    assert (zeros is None) == symmetric
    m = Int4Linear.from_quantized(q, scales, zeros, group_size, None)
    zero = 8.0 if zeros is None else zeros.repeat_interleave(group_size, 1)
    expected = (q.float() - zero) * scales.repeat_interleave(group_size, 1)  # computed another way
    assert torch.equal(m.codes(), q) and torch.equal(m.dequantize(), expected)
    # round-to-nearest: every weight within half a step of the original
    step = scales.repeat_interleave(group_size, 1)
    assert bool(((m.dequantize() - w).abs() <= step / 2 * (1 + 1e-4)).all())


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("rows", [1, 3, 4, 9, 70, 500])
def test_int4_linear_equals_its_dequantised_weight(backend, rows, group_size):
    torch.manual_seed(rows)
    lin = torch.nn.Linear(256, 72, bias=True)
    m = Int4Linear.from_float(lin.weight, lin.bias, group_size=group_size)
    x = torch.randn(rows, 256) * 3
    # every path multiplies the int8-rounded activations by the dequantised weight
    exact = F.linear(quant.round_activations_int8(x), m.dequantize(), m.bias)
    torch.testing.assert_close(m(x), exact, atol=5e-5, rtol=1e-5)
    # a row's result does not depend on the other rows of its batch
    torch.testing.assert_close(m(x[:1]), m(x)[:1], atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("rows", [1, 6])
def test_int4_linear_at_the_real_model_widths(backend, rows):
    """896 inputs in groups of 32: 28 groups, three runs of the kernel's 8-group path and a tail of 4."""
    torch.manual_seed(9)
    m = Int4Linear.from_float(torch.randn(40, 896), torch.randn(40), group_size=32)
    x = torch.randn(rows, 896)
    exact = F.linear(quant.round_activations_int8(x), m.dequantize(), m.bias)
    torch.testing.assert_close(m(x), exact, atol=1e-4, rtol=1e-5)


def test_min_offset_form_as_gguf_q4_k_stores_it(backend):
    """Built from scales and offsets (w = q * scale + offset, no zero points), as from Q4_K blocks."""
    torch.manual_seed(3)
    q = torch.randint(0, 16, (24, 128), dtype=torch.uint8)
    scale, offset = torch.rand(24, 4) * 0.1, -torch.rand(24, 4) * 0.5
    m = Int4Linear(pack_int4(q), scale, offset, 32)
    w = q.float() * scale.repeat_interleave(32, 1) + offset.repeat_interleave(32, 1)
    assert torch.equal(m.dequantize(), w)
    x = torch.randn(5, 128)
    torch.testing.assert_close(m(x), F.linear(quant.round_activations_int8(x), w), atol=2e-5, rtol=1e-5)


def test_bad_shapes_are_refused_with_a_message():
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear.from_float(torch.randn(8, 96), group_size=64)
    with pytest.raises(ValueError, match="0..15"):
        Int4Linear.from_quantized(torch.full((4, 32), 16, dtype=torch.uint8), torch.ones(4, 1), None, 32)


def test_quantize_int4_swaps_layers_and_keeps_the_model_close():
    model = tiny_model(seed=7)
    ids = torch.randint(0, 259, (2, 24))
    with torch.no_grad():
        ref = model(ids)
        q = quantize_int4(tiny_model(seed=7), group_size=32)
        assert isinstance(q.layers[0].mlp.down_proj, Int4Linear) and isinstance(q.lm_head, Int8Linear)
        assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
        out = q(ids)
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.15, rel  # 4-bit weights of a random model: ~10x the int8 error, far from noise
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree > 0.7, agree


def test_engine_runs_an_int4_model_as_its_own_forward():
    """Greedy decoding of the int4 model through the engine equals greedy decoding by full forwards of
    the same int4 model (whichever path each step takes: fused C step, kernel or torch)."""
    model = quantize_int4(tiny_model(seed=2), group_size=32).eval()
    params = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=64)
    got = eng.generate(["hello world", "abc"], params)
    eng.close()
    for prompt, completion in zip(["hello world", "abc"], got):
        ids = list(prompt.encode())
        with torch.no_grad():
            for _ in range(10):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert completion.token_ids[:6] == ids[len(prompt.encode()):][:6]


def test_the_c_dequantisation_for_long_prefills_equals_the_torch_one():
    if quant.load_kernels() is None:
        pytest.skip(f"C kernels unavailable: {quant.kernel_status()}")
    torch.manual_seed(5)
    m = Int4Linear.from_float(torch.randn(24, 384), None, group_size=64)
    torch.testing.assert_close(m._dense(), m.dequantize(), atol=1e-6, rtol=1e-6)
    q = torch.randint(0, 16, (8, 128), dtype=torch.uint8)  # the offset form (C may fuse the multiply-add)
    g = Int4Linear(pack_int4(q), torch.rand(8, 4), -torch.rand(8, 4), 32)
    torch.testing.assert_close(g._dense(), g.dequantize(), atol=1e-6, rtol=1e-6)


def test_int8_activation_rounding_is_per_block_of_32():
    x = torch.randn(3, 128, dtype=torch.float64) * torch.logspace(-3, 3, 128, dtype=torch.float64)
    x[1, 32:64] = 0.0
    r = quant.round_activations_int8(x.float()).double()
    amax = x.reshape(3, 4, 32).abs().amax(-1, keepdim=True)
    # each value within half a step (absmax / 127 / 2) of its block's grid, a zero block stays zero
    assert bool(((r - x).reshape(3, 4, 32).abs() <= amax / 127 / 2 * 1.001 + 1e-30).all())
    assert bool((r[1, 32:64] == 0).all())
    # on the grid: the values are whole multiples of the block's step, at most 127 of them
    steps = (r.reshape(3, 4, 32) / (amax / 127).clamp(min=1e-300))
    assert bool(((steps - steps.round()).abs() < 1e-3).all()) and float(steps.abs().max()) <= 127.0 + 1e-3


@pytest.mark.parametrize("group_size", [32, 64, 128, 96])
@pytest.mark.parametrize("rows", [1, 4, 7])
def test_vnni_and_avx2_int4_products_give_the_same_bits(group_size, rows):
    """The AVX512-VNNI dot product (used where the CPU has it) and the AVX2 one (every other CPU) sum
    the same integers exactly, so a machine of either kind computes the same output."""
    torch.manual_seed(group_size + rows)
    k = 1344 if group_size == 96 else 896  # 42 / 28 segments: tails of 2 and 4 segments after runs of 8
    m = Int4Linear.from_float(torch.randn(37, k), torch.randn(37), group_size=group_size)
    x = torch.randn(rows, k) * 2
    with_vnni, with_avx2 = with_and_without_vnni(lambda: m(x))
    assert torch.equal(with_vnni, with_avx2)
    torch.testing.assert_close(with_vnni, F.linear(quant.round_activations_int8(x), m.dequantize(), m.bias),
                               atol=1e-4, rtol=1e-5)
