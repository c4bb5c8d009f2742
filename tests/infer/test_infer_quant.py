"""Weight-only int8 and bf16 linears: exact against their own dequantised weights, close to fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from infer_helpers import ByteTokenizer, tiny_model, with_and_without_vnni

from openqwen.infer import quant
from openqwen.infer.engine import Engine
from openqwen.infer.quant import (BF16Linear, Int8Embedding, Int8Linear, optimise_for_decode, quantize_embedding,
                                  quantize_int8, round_rows_int8)
from openqwen.infer.sampling import SamplingParams
from openqwen.train.cpu_matmul import onednn_available


@pytest.mark.parametrize("rows", [1, 3, 16, 40, 80, 300])
def test_int8_linear_equals_its_dequantised_weight(backend, rows):
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 96, bias=True)
    q = Int8Linear(lin.weight, lin.bias)
    assert q.weight.dtype == torch.int8 and q.weight.abs().max() <= 127
    x = torch.randn(2, rows, 256)
    # every path multiplies the int16-rounded activations by the dequantised weight
    exact = F.linear(quant.round_activations_int16(x), q.weight.float() * q.scale[:, None], q.bias)
    torch.testing.assert_close(q(x), exact, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(q(x), F.linear(x, q._dense(), q.bias), atol=1e-3, rtol=1e-3)  # and x barely moved
    # per-row absmax int8 keeps every weight within half a step of the original
    err = (q.weight.float() * q.scale[:, None] - lin.weight).abs()
    assert bool((err <= q.scale[:, None] / 2 + 1e-7).all())


@pytest.mark.parametrize("onednn", [False, True])
def test_long_prefills_multiply_alike_on_either_library(monkeypatch, onednn):
    """Past a layer's kernel rows the product runs on MKL or oneDNN (onednn_preferred); both compute the
    int16-rounded activations times the dequantised weight, up to fp32 summation order."""
    if onednn and not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setattr(quant, "onednn_preferred", lambda: onednn)
    monkeypatch.setattr(Int8Linear, "kernel_rows", (quant.MAX_KERNEL_ROWS,) * 2)  # int8 has no limit of its own
    torch.manual_seed(1)
    lin = torch.nn.Linear(192, 320, bias=True)
    x = torch.randn(quant.MAX_KERNEL_ROWS + 30, 192)
    for layer in (Int8Linear(lin.weight, lin.bias), BF16Linear(lin.weight, lin.bias)):
        dense = layer.weight.double() * (layer.scale[:, None].double() if hasattr(layer, "scale") else 1.0)
        exact = F.linear(layer._prepare_input(x).double(), dense, layer.bias.double())
        torch.testing.assert_close(layer(x).double(), exact, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_int8_and_int4_layers_run_every_prompt_length_through_the_kernel(monkeypatch, kind):
    """Without native bf16 products, a 1,000-row prompt still goes through the C kernel (which beats
    torch's fp32 matmul at every length measured), in KERNEL_ROW_CHUNK pieces."""
    if quant.load_kernels() is None:
        pytest.skip(f"C kernels unavailable: {quant.kernel_status()}")
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "fp32")
    calls = []
    real = quant.linear_forward
    monkeypatch.setattr(quant, "linear_forward", lambda spec, x, n: calls.append(x.shape[0]) or real(spec, x, n))
    torch.manual_seed(4)
    lin = torch.nn.Linear(256, 96, bias=True)
    layer = Int8Linear(lin.weight, lin.bias) if kind == "int8" else quant.Int4Linear.from_float(lin.weight, lin.bias, 64)
    x = torch.randn(1000, 256)
    with torch.no_grad():
        y = layer(x)
    assert sum(calls) == 1000 and max(calls) == quant.KERNEL_ROW_CHUNK
    exact = F.linear(layer._prepare_input(x).double(), layer._dense().double(), layer.bias.double())
    torch.testing.assert_close(y.double(), exact, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_long_prefills_multiply_in_bf16_when_asked_and_only_without_grad(monkeypatch, kind):
    """OPENQWEN_PREFILL_PRODUCTS=bf16: past the kernel's rows, inference multiplies bf16-rounded
    activations by the bf16 weight (int8: the codes themselves, exact in bf16, then the row scale) with
    fp32 accumulation and a bf16 result; with grad enabled, or =fp32, the fp32 product as before."""
    torch.manual_seed(2)
    lin = torch.nn.Linear(256, 320, bias=True)
    layer = Int8Linear(lin.weight, lin.bias) if kind == "int8" else quant.Int4Linear.from_float(lin.weight, lin.bias, 64)
    x = torch.randn(quant.MAX_KERNEL_ROWS + 30, 256)
    xq = layer._prepare_input(x).to(torch.bfloat16).double()
    # w: what multiplies x (int8: the codes, scaled after; int4: the dequantised weight rounded to bf16)
    w, scale = ((layer.weight.double(), layer.scale.double()) if kind == "int8"
                else (layer.dequantize().to(torch.bfloat16).double(), torch.ones(320, dtype=torch.float64)))
    raw = xq @ w.t()
    expected = raw.to(torch.bfloat16).double() * scale + layer.bias.double()
    # one bf16 step of the result (a rounding to either neighbour) plus fp32 accumulation over 256 terms
    bound = (raw.abs() / 128 + 256 * 2**-24 * (xq.abs() @ w.abs().t())) * scale + 1e-7
    fp32 = F.linear(layer._prepare_input(x).double(), layer._dense().double(), layer.bias.double())
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "bf16")
    with torch.no_grad():
        y = layer(x).double()
    assert bool(((y - expected).abs() <= bound).all())
    assert not torch.allclose(y, fp32, atol=1e-5, rtol=1e-5)  # it really took the bf16 product
    torch.testing.assert_close(y, fp32, atol=0.05, rtol=0.02)
    torch.testing.assert_close(layer(x).double(), fp32, atol=2e-5, rtol=1e-5)  # grad enabled: fp32
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "fp32")
    with torch.no_grad():
        torch.testing.assert_close(layer(x).double(), fp32, atol=2e-5, rtol=1e-5)


def test_bf16_products_take_over_from_the_kernel_at_each_layer_types_rows(monkeypatch):
    """int8 layers leave the C kernel for bf16 products past 48 rows, int4 only past 255 (rounding its
    dequantised weight to bf16 costs more than it saves below that)."""
    torch.manual_seed(3)
    lin = torch.nn.Linear(256, 128, bias=False)
    int8, int4 = Int8Linear(lin.weight, None), quant.Int4Linear.from_float(lin.weight, None, 64)
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "bf16")
    for layer, rows, bf16 in ((int8, 48, False), (int8, 49, True), (int4, 200, False), (int4, 256, True)):
        x = torch.randn(rows, 256)
        with torch.no_grad():
            y = layer(x)
        fp32 = F.linear(layer._prepare_input(x), layer._dense())
        assert torch.allclose(y, fp32, atol=2e-5, rtol=1e-5) is not bf16, (type(layer).__name__, rows)
        if bf16:
            torch.testing.assert_close(y, layer._bf16_product(layer._prepare_input(x)))


@pytest.mark.parametrize("rows", [1, 5, 40, 80, 600])
def test_bf16_linear_accumulates_in_fp32(backend, rows):
    torch.manual_seed(1)
    lin = torch.nn.Linear(128, 64, bias=False)
    b = BF16Linear(lin.weight, None)
    x = torch.randn(rows, 128)
    exact = F.linear(x, lin.weight.to(torch.bfloat16).float())
    torch.testing.assert_close(b(x), exact, atol=2e-5, rtol=1e-5)
    xb = x.bfloat16()  # bf16 in, bf16 out (rounded once, from the fp32 sum)
    assert b(xb).dtype == torch.bfloat16
    torch.testing.assert_close(b(xb), F.linear(xb.float(), lin.weight.to(torch.bfloat16).float()).bfloat16())


def test_int16_activation_rounding():
    x = torch.randn(3, 128) * torch.logspace(-3, 3, 128)  # blocks of very different magnitudes
    x[1, :64] = 0.0
    r = quant.round_activations_int16(x)
    blocks = x.reshape(3, 2, 64).abs().amax(-1, keepdim=True)
    assert bool(((r - x).reshape(3, 2, 64).abs() <= blocks / 32767 / 2 * 1.001 + 1e-30).all())
    assert bool((r[1, :64] == 0).all())
    # on the int16 grid: rounding again changes nothing
    torch.testing.assert_close(quant.round_activations_int16(r), r, atol=0, rtol=1e-6)


def test_odd_widths_use_the_fallback():
    lin = torch.nn.Linear(50, 7)
    q = Int8Linear(lin.weight, lin.bias)
    x = torch.randn(2, 50)
    torch.testing.assert_close(q(x), F.linear(x, q._dense(), q.bias), atol=1e-5, rtol=1e-5)


def test_int8_model_close_to_fp32():
    model = tiny_model(seed=7, tie_word_embeddings=True)
    ids = torch.randint(0, 259, (2, 30))
    with torch.no_grad():
        ref = model(ids)
        q = quantize_int8(tiny_model(seed=7, tie_word_embeddings=True))
        assert not any(isinstance(m, torch.nn.Linear) for m in q.modules())
        out = q(ids)
    rel = (out - ref).norm() / ref.norm()
    assert rel < 0.02, rel
    # and the decoded tokens mostly agree (random tiny models are fragile; real ones agree more)
    agree = (out.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree > 0.9


def test_rounding_rows_in_chunks_equals_rounding_the_whole_matrix():
    torch.manual_seed(5)
    w = torch.randn(103, 64) * torch.rand(103, 1) * 3
    w[7] = 0.0  # an all-zero row keeps a tiny positive scale and zero codes
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # the whole-matrix formula, written out
    codes = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    for chunk in (1, 10, 64, 103, 4096):  # chunk edges inside, at and past the last row
        q, s = round_rows_int8(w, chunk)
        assert q.dtype == torch.int8 and torch.equal(q, codes) and torch.equal(s, scale), chunk


def test_int8_embedding_rows_are_the_heads_rows():
    torch.manual_seed(1)
    weight = torch.randn(300, 64)
    head = Int8Linear(weight, None)
    shared = Int8Embedding.sharing(head)
    assert shared.weight.data_ptr() == head.weight.data_ptr() and shared.scale.data_ptr() == head.scale.data_ptr()
    ids = torch.tensor([[0, 7, 299, 7], [3, 3, 150, 42]])
    rows = head.weight.float() * head.scale[:, None]  # the head's dequantised matrix, computed apart
    got = shared(ids)
    assert got.dtype == torch.float32 and got.shape == (2, 4, 64)
    torch.testing.assert_close(got, rows[ids], rtol=0, atol=0)
    torch.testing.assert_close(Int8Embedding.from_float(weight)(ids), rows[ids], rtol=0, atol=0)
    # within half a rounding step of the float rows
    assert bool(((got - weight[ids]).abs() <= head.scale[ids].unsqueeze(-1) / 2 + 1e-7).all())
    with pytest.raises(ValueError, match="int8 rows"):
        Int8Embedding(weight, head.scale)


@pytest.mark.parametrize("tied", [True, False])
def test_quantized_embedding_shares_a_tied_head(tied):
    model = quantize_int8(tiny_model(seed=4, tie_word_embeddings=tied))
    float_rows = model.embed_tokens.weight.clone()
    quantize_embedding(model)
    embed = model.embed_tokens
    assert isinstance(embed, Int8Embedding)
    # a tied checkpoint's one matrix stays one; an untied one gets its own int8 rows of its own weights
    assert (embed.weight.data_ptr() == model.lm_head.weight.data_ptr()) == tied
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    assert (embed(ids) - float_rows[ids]).abs().max() <= embed.scale.max() / 2 + 1e-7
    assert model.new_cache(1, 8).dtype == torch.float32  # the cache follows the activations, not int8 rows
    assert quantize_embedding(model).embed_tokens is embed  # idempotent


def test_engine_runs_int8_and_bf16_models():
    params = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    ref = Engine(tiny_model(seed=2), ByteTokenizer(), max_batch_size=2, max_seq_len=64)
    expected = ref.generate(["hello world", "abc"], params)
    ref.close()
    for prepare in (lambda m: quantize_int8(m), lambda m: optimise_for_decode(m.to(torch.bfloat16))):
        eng = Engine(prepare(tiny_model(seed=2)), ByteTokenizer(), max_batch_size=2, max_seq_len=64)
        got = eng.generate(["hello world", "abc"], params)
        eng.close()
        # low precision may flip a late near-tie; the first tokens must agree
        for a, b in zip(expected, got):
            assert a.token_ids[:4] == b.token_ids[:4]


@pytest.mark.parametrize("rows", [1, 4, 7])
def test_vnni_and_avx2_int8_products_give_the_same_bits(rows):
    """The int8 kernel's AVX512-VNNI multiply-adds (used where the CPU has them) and its AVX2 ones sum the
    same integers exactly, at one row and at tiles of four, so every machine computes the same output."""
    torch.manual_seed(rows)
    m = Int8Linear(torch.randn(37, 896), torch.randn(37))
    x = torch.randn(rows, 896) * 3
    with_vnni, with_avx2 = with_and_without_vnni(lambda: m(x))
    assert torch.equal(with_vnni, with_avx2)
    w = m.weight.float() * m.scale[:, None]
    torch.testing.assert_close(with_vnni, F.linear(quant.round_activations_int16(x), w, m.bias), atol=1e-3, rtol=1e-5)
