"""GPTQ calibration (openqwen.infer.gptq) and the GPTQ checkpoint layout (openqwen.infer.gptq_format)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from openqwen.config import get_preset
from openqwen.infer.gptq import QuantFormat, calibrate, quantize_gptq, quantize_rtn
from openqwen.infer.gptq_format import is_gptq_folder, load_gptq, module_weights, pack_model, save_gptq
from openqwen.infer.quant import Int4Linear, Int8Linear
from openqwen.model import Qwen


def tiny_model(seed: int = 0) -> Qwen:
    torch.manual_seed(seed)
    cfg = get_preset("nano-1m", intermediate_size=256, num_key_value_heads=2, qkv_bias=True, num_hidden_layers=2,
                     vocab_size=512)
    return Qwen(cfg).eval()


def correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Inputs whose features are correlated and of unequal size, as activations are."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) * torch.linspace(0.1, 2.0, d)
    return torch.randn(n, d, generator=g) @ mix


def output_error(w: torch.Tensor, wq: torch.Tensor, x: torch.Tensor) -> float:
    return float(np.linalg.norm(x.numpy() @ (w - wq).numpy().T))


@pytest.mark.parametrize("fmt", [QuantFormat(4, 32), QuantFormat(4, 64, symmetric=False), QuantFormat(8)])
def test_gptq_beats_round_to_nearest_on_layer_output_error(fmt):
    torch.manual_seed(1)
    w = torch.randn(64, 128) * 0.05
    rows = correlated_inputs(2048, 128, seed=2)
    calib, held_out = rows[:1024], rows[1024:]  # the same distribution; held_out: rows calibration did not see
    h = 2 * calib.double().t() @ calib.double() / calib.shape[0]
    rtn, gptq = quantize_rtn(w, fmt), quantize_gptq(w, h, fmt)
    for x in (calib, held_out):
        e_rtn, e_gptq = output_error(w, rtn.dequantize(), x), output_error(w, gptq.dequantize(), x)
        assert e_gptq < 0.92 * e_rtn, (e_gptq, e_rtn)
    # the codes stay on the grid: 0..maxq, and each group's extreme weight is within half a step
    assert int(gptq.q.max()) <= fmt.maxq and gptq.q.dtype == torch.uint8


def test_gptq_with_uncorrelated_equal_inputs_is_round_to_nearest():
    """H = c * I: no column's error can be compensated by another, so GPTQ must round as RTN does."""
    torch.manual_seed(3)
    w = torch.randn(32, 64)
    rtn, gptq = quantize_rtn(w, QuantFormat(4, 32)), quantize_gptq(w, 3.0 * torch.eye(64), QuantFormat(4, 32))
    assert torch.equal(rtn.q, gptq.q) and torch.equal(rtn.scales, gptq.scales)


def test_grids_as_documented():
    w = torch.tensor([[0.5, -1.0, 0.25, 0.0] * 8])
    sym = quantize_rtn(w, QuantFormat(4, 32))
    assert float(sym.scales[0, 0]) == 1.0 / 8 and float(sym.zeros[0, 0]) == 8  # extreme -1.0 is code 0 exactly
    assert torch.allclose(sym.dequantize(), w)
    int8 = quantize_rtn(w, QuantFormat(8))
    ref = Int8Linear(w, None)  # the same grid as the int8 module (codes, and the scale up to fp16)
    assert torch.equal(int8.q.to(torch.int16) - 128, ref.weight.to(torch.int16))
    assert abs(float(int8.scales[0, 0]) - float(ref.scale[0])) < 1e-3 * float(ref.scale[0])


def test_calibrated_tiny_model_is_closer_to_float_than_rtn():
    model = tiny_model()
    calib = torch.randint(0, 512, (16, 48), generator=torch.Generator().manual_seed(0))
    held = torch.randint(0, 512, (4, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(held)
        errs = {}
        for method in ("rtn", "gptq"):
            m = copy.deepcopy(model)
            results = calibrate(m, calib, QuantFormat(4, 32), method=method)
            assert len(results) == 2 * 4  # every block linear (qkv, o, gate_up, down)
            errs[method] = float((m(held) - ref).norm() / ref.norm())
    assert errs["gptq"] < 0.9 * errs["rtn"], errs


def _unpack_reference(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Bit by bit, the way the GPTQ layout is described: value j of a word in bits [bits*j, bits*(j+1))."""
    u = words.view(np.uint32).astype(np.int64)
    per = 32 // bits
    vals = np.stack([(u >> (bits * j)) & ((1 << bits) - 1) for j in range(per)], axis=axis + 1)
    shape = list(u.shape)
    shape[axis] *= per
    return vals.reshape(shape)


@pytest.mark.parametrize("fmt", [QuantFormat(4, 32), QuantFormat(4, 64, symmetric=False), QuantFormat(8)])
def test_gptq_folder_round_trip_and_layout(tmp_path, fmt):
    model = tiny_model()
    ids = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        results = calibrate(model, ids, fmt)
        pack_model(model, results, head_int8=False)
        packed_logits = model(ids)
    save_gptq(model, tmp_path, fmt, "gptq")
    assert is_gptq_folder(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "gptq" and config["quantization_config"]["bits"] == fmt.bits

    # the file, read with safetensors and numpy only, dequantises to the calibrated weights
    from safetensors.numpy import load_file

    t = load_file(str(tmp_path / "model.safetensors"))
    pre = "model.layers.1.self_attn.k_proj."
    codes = _unpack_reference(t[pre + "qweight"], fmt.bits, 0)  # [in, out]
    zeros = _unpack_reference(t[pre + "qzeros"], fmt.bits, 1) + 1  # [groups, out]
    scales = t[pre + "scales"].astype(np.float32)
    g_idx = t[pre + "g_idx"]
    w = scales[g_idx] * (codes - zeros[g_idx])  # [in, out]
    kv = model.config.num_key_value_heads * model.config.head_dim
    q_rows = model.config.num_attention_heads * model.config.head_dim
    expected = results["layers.1.self_attn.qkv_proj"].dequantize()[q_rows : q_rows + kv]
    np.testing.assert_array_equal(w.T, expected.numpy())
    assert pre + "bias" in t and "model.layers.0.mlp.gate_proj.qweight" in t

    back = load_gptq(tmp_path, head_int8=False)
    kind = Int4Linear if fmt.bits == 4 else Int8Linear
    assert isinstance(back.layers[0].mlp.down_proj, kind)
    for name, qw in results.items():
        got = module_weights(back.get_submodule(name), name)
        assert torch.equal(got.q, qw.q) and torch.equal(got.scales, qw.scales) and torch.equal(got.zeros, qw.zeros)
    with torch.no_grad():
        assert torch.equal(back(ids), packed_logits)


def test_bad_formats_are_refused():
    with pytest.raises(ValueError, match="bits"):
        QuantFormat(3)
    with pytest.raises(ValueError, match="group_size"):
        QuantFormat(4, 48)
    with pytest.raises(ValueError, match="divide"):
        quantize_rtn(torch.randn(4, 96), QuantFormat(4, 64))
