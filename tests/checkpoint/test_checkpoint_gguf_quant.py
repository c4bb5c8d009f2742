"""GGUF blocks kept quantised at load: Q4_K as int4 codes exactly as the gguf package dequantises them,
other blocks rounded to int4 within half a step, int8 per row; the precision ``auto`` picks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import save_model
from openqwen.checkpoint.gguf import q4_k_groups
from openqwen.infer.loading import checkpoint_precision, load_for_inference
from openqwen.infer import kernels, quant
from openqwen.infer.gguf_quant import GGUFBlockEmbedding
from openqwen.infer.quant import Int4Linear, Int8Embedding, Int8Linear

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

from hf_reference import randomise  # noqa: E402
from test_checkpoint_gguf import GGUF_CONFIG, random_blocks, write_gguf  # noqa: E402


def test_q4_k_groups_equal_the_gguf_reference_dequantiser():
    raw = random_blocks("Q4_K", 4 * 3, seed=11)  # 4 rows of 768 inputs
    codes, scale, offset = q4_k_groups(torch.from_numpy(raw.reshape(-1).copy()), (4, 768))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15 and scale.shape == offset.shape == (4, 24)
    ours = (codes.float().reshape(4, 24, 32) * scale[..., None] + offset[..., None]).reshape(4, 768)
    ref = gguf.quants.dequantize(raw.reshape(4, -1), Q.Q4_K)
    assert np.array_equal(ours.numpy(), ref)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    torch.manual_seed(4)
    model = randomise(Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=False)), seed=4)
    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    reference = write_gguf(path, model)
    return path, reference, load_for_inference(path, "fp32", announce=False)


def test_int4_load_keeps_q4_k_exact_and_rounds_the_rest_within_half_a_step(tiny_gguf):
    path, reference, dense = tiny_gguf
    model = load_for_inference(path, "int4", announce=False)
    assert model.precision == "int4" and isinstance(model.lm_head, Int8Linear)
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    for i in range(2):
        gate_up = model.layers[i].mlp.gate_up_proj
        assert isinstance(gate_up, Int4Linear) and gate_up.group_size == 32
        w = gate_up.dequantize()
        gate = reference[f"model.layers.{i}.mlp.gate_proj.weight"]  # stored as Q4_K
        assert np.array_equal(w[:512].numpy(), gate), "Q4_K rows must arrive exactly"
        up = torch.from_numpy(np.array(reference[f"model.layers.{i}.mlp.up_proj.weight"]))  # Q8_0, rounded to int4
        step = gate_up.scale[512:].repeat_interleave(32, 1)
        assert bool(((w[512:] - up).abs() <= step / 2 * (1 + 1e-4) + 1e-7).all())
        assert torch.equal(model.layers[i].self_attn.qkv_proj.bias, dense.layers[i].self_attn.qkv_proj.bias)
    # assembled right (row order, biases, head): the float model holding the dequantised int4 weights,
    # its inputs rounded as the quantised layers round theirs, computes the same function
    twin = load_for_inference(path, "fp32", announce=False)
    with torch.no_grad():
        for (name, ours), theirs in zip(model.named_modules(), twin.modules()):
            if isinstance(ours, (Int4Linear, Int8Linear)):
                int4 = isinstance(ours, Int4Linear)
                theirs.weight.copy_(ours.dequantize() if int4 else ours._dense())
                rounding = quant.round_activations_int8 if int4 else quant.round_activations_int16
                if ours.in_features % quant.ACTIVATION_BLOCK == 0:
                    theirs.register_forward_pre_hook(lambda mod, args, r=rounding: (r(args[0]),))
        embed = model.embed_tokens  # int8 rows in a quantised model: the twin gets them dequantised
        twin.embed_tokens.weight.copy_(embed.weight.float() * embed.scale[:, None])
        ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(model(ids), twin(ids), atol=2e-3, rtol=1e-3)


@pytest.mark.parametrize("embed_type", ["Q5_0", "Q4_K", "Q6_K"])
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_an_embedding_of_fewer_than_8_bits_stays_in_its_blocks(tmp_path, embed_type, precision):
    model = randomise(Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=False)), seed=5)
    path = tmp_path / "m.gguf"
    reference = write_gguf(path, model, embed_type=embed_type)
    loaded = load_for_inference(path, precision, announce=False)
    embed = loaded.embed_tokens
    assert isinstance(embed, GGUFBlockEmbedding) and embed.type_name == embed_type
    block, size = gguf.GGML_QUANT_SIZES[Q[embed_type]]
    assert embed.weight.numel() == 97 * 256 // block * size  # the file's bytes, nothing more
    rows = reference["model.embed_tokens.weight"]  # the gguf package's dequantisation of the whole matrix
    ids = torch.tensor([[0, 5, 96, 5], [17, 3, 3, 60]])
    assert np.array_equal(embed(ids).numpy(), rows[ids.numpy()])
    assert np.array_equal(embed(torch.tensor([42])).numpy(), rows[[42]])  # a decode step's one row
    with pytest.raises(IndexError):  # an id past the vocabulary is refused, never read out of bounds
        embed(torch.tensor([97]))


@pytest.mark.skipif(kernels.load_kernels() is None, reason=f"C kernels: {kernels.kernel_status()}")
@pytest.mark.parametrize("qtype", ["Q8_0", "Q5_0"])
def test_gathering_block_rows_in_c_equals_the_gguf_dequantiser(qtype):
    rows, k = 40, 256
    blocks = random_blocks(qtype, rows * k // 32, seed=9)
    ref = gguf.quants.dequantize(blocks.reshape(rows, -1), Q[qtype])
    raw = torch.from_numpy(blocks.reshape(rows, -1).copy())
    ids = torch.tensor([39, 0, 7, 7, 21])
    out = kernels.gather_rows_gguf(raw, Q[qtype].value, ids, k)
    assert out is not None and np.array_equal(out.numpy(), ref[ids.numpy()])
    assert kernels.gather_rows_gguf(raw, Q[qtype].value, torch.tensor([3, 40]), k) is None  # out of range: torch's turn
    assert kernels.gather_rows_gguf(raw, Q[qtype].value, torch.tensor([-1]), k) is None
    assert kernels.gather_rows_gguf(raw, Q.Q4_K.value, ids, k) is None  # not a type the C gather reads


def test_an_embedding_of_8_bits_or_a_tied_one_becomes_int8_rows(tmp_path):
    for tied, embed_type in ((False, "Q8_0"), (True, "Q5_0")):
        model = randomise(Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=tied)), seed=5)
        write_gguf(tmp_path / "m.gguf", model, embed_type=embed_type)
        loaded = load_for_inference(tmp_path / "m.gguf", "int8", announce=False)
        assert isinstance(loaded.embed_tokens, Int8Embedding), (tied, embed_type)
        if tied:  # the head's int8 rows, read by both
            assert loaded.embed_tokens.weight.data_ptr() == loaded.lm_head.weight.data_ptr()


def test_int8_load_equals_quantising_the_dequantised_model(tiny_gguf):
    path, _, dense = tiny_gguf
    model = load_for_inference(path, "int8", announce=False)
    for (name, ours), theirs in zip(model.named_modules(), dense.modules()):
        if isinstance(theirs, torch.nn.Linear):
            assert isinstance(ours, Int8Linear), name
            # per-row int8 of the float32 weight, rounded by torch ops (the load rounds in C, some parts
            # straight from their Q8_0 / Q5_0 blocks)
            codes, scale = quant.round_rows_int8_torch(theirs.weight.detach())
            assert torch.equal(ours.weight, codes) and torch.equal(ours.scale, scale), name


@pytest.mark.skipif(kernels.load_kernels() is None, reason=f"C kernels: {kernels.kernel_status()}")
@pytest.mark.parametrize("qtype", ["F32", "Q8_0", "Q5_0"])
def test_int8_rounding_in_c_equals_torch_bit_for_bit(qtype):
    """round_rows_int8_c from fp32 rows, or straight from blocks, against gguf's dequantiser followed by
    torch's rounding: the same codes and scales, over rows of every magnitude, an all-zero row, rows
    with half-way values, and blocks whose fp16 scale is zero, subnormal or negative."""
    rows, k = 24, 320
    if qtype == "F32":
        w = torch.randn(rows, k, generator=torch.Generator().manual_seed(3)) * torch.logspace(-30, 30, rows)[:, None]
        w[4] = 0.0
        w[5, :] = torch.arange(k) % 7 - 3.0
        w[5, 0] = 127 * 2.0  # scale 2: the odd entries are half-way between two codes
        raw, expected = w, quant.round_rows_int8_torch(w)
    else:
        blocks = random_blocks(qtype, rows * k // 32, seed=7)
        d = np.array([0.0, 1e-7, -3e-5, 6e-5, -2.5, 60000.0], dtype=np.float16)  # 0, subnormals, the extremes
        blocks[: len(d), :2] = d.view(np.uint8).reshape(-1, 2)
        blocks[k // 32 : 2 * k // 32, :2] = 0  # the whole second row is zero
        ref = gguf.quants.dequantize(blocks.reshape(rows, -1), Q[qtype])
        raw, expected = torch.from_numpy(blocks.reshape(-1).copy()), quant.round_rows_int8_torch(torch.from_numpy(ref))
    codes, scale = kernels.round_rows_int8_c(raw, rows, k, source=qtype)
    assert torch.equal(codes, expected[0]) and torch.equal(scale, expected[1])
    assert int(codes.abs().max()) == 127 and not codes[1 if qtype != "F32" else 4].any()
    with pytest.raises(ValueError, match="needs"):
        kernels.round_rows_int8_c(raw[:-2] if qtype != "F32" else raw[:-1], rows, k, source=qtype)


@pytest.mark.skipif(kernels.load_kernels() is None, reason=f"C kernels: {kernels.kernel_status()}")
@pytest.mark.parametrize("qtype,group", [("F32", 32), ("F32", 128), ("Q8_0", 32), ("Q5_0", 32), ("Q5_0", 64)])
def test_int4_rounding_in_c_equals_torch_bit_for_bit(qtype, group):
    """round_groups_int4_c against quantize_rtn_int4 (on gguf's dequantisation for blocks) then pack_int4:
    the same packed codes, scales and offsets -z * s, over groups of every magnitude, all-positive and
    all-negative groups (the zero point at 0 or 15), an all-zero row and codes half-way between two."""
    rows, k = 24, 384
    if qtype == "F32":
        w = torch.randn(rows, k, generator=torch.Generator().manual_seed(5)) * torch.logspace(-30, 30, rows)[:, None]
        w[2] = w[2].abs()
        w[3] = -w[3].abs()
        w[4] = 0.0
        w[5] = ((torch.arange(k) % 32) * 0.25 - 1.5).clamp(max=6.0)  # s = 0.5, so w / s lands on halves
        raw, ref = w, w
    else:
        blocks = random_blocks(qtype, rows * k // 32, seed=11)
        d = np.array([0.0, 1e-7, -3e-5, 6e-5, -2.5, 60000.0], dtype=np.float16)
        blocks[: len(d), :2] = d.view(np.uint8).reshape(-1, 2)
        blocks[k // 32 : 2 * k // 32, :2] = 0  # the whole second row is zero
        raw = torch.from_numpy(blocks.reshape(-1).copy())
        ref = torch.from_numpy(gguf.quants.dequantize(blocks.reshape(rows, -1), Q[qtype]))
    q, s, z = quant.quantize_rtn_int4(ref, group)
    packed, scale, offset = kernels.round_groups_int4_c(raw, rows, k, group, source=qtype)
    assert torch.equal(packed, quant.pack_int4(q)) and torch.equal(scale, s) and torch.equal(offset, -z * s)
    assert {int(q.min()), int(q.max())} == {0, 15}  # both ends of the code range are exercised
    assert kernels.round_groups_int4_c(raw, rows, k, 48, source=qtype) is None  # not a multiple of 32


def test_auto_precision_follows_the_checkpoint(tiny_gguf, tmp_path, capsys):
    path, _, _ = tiny_gguf
    # the tiny file is mostly Q8_0 / Q6_K / F16 by weights: nearest to int8
    precision, why = checkpoint_precision(path)
    assert precision == "int8" and "Q8_0" in why
    model = load_for_inference(path)  # auto, announced
    assert model.precision == "int8" and "runs in int8" in capsys.readouterr().err
    torch.manual_seed(0)
    small = randomise(Qwen(QwenConfig(**GGUF_CONFIG)), seed=1)
    f32 = tmp_path / "f32.gguf"
    write_gguf(f32, small, all_f32=True)
    assert checkpoint_precision(f32)[0] == "fp32"
    save_model(small.to(torch.bfloat16), tmp_path / "bf16")
    assert checkpoint_precision(tmp_path / "bf16") == ("bf16", "the checkpoint is bfloat16")
    assert load_for_inference(tmp_path / "bf16", announce=False).precision == "bf16"
    over = load_for_inference(tmp_path / "bf16", "int4")
    assert over.precision == "int4" and "--dtype int4" in capsys.readouterr().err
