"""Checkpoint formats beyond the Qwen2 layout: first-generation folders and GGUF files.

References are independent of the code under test: first-generation folders are assembled here by
hand from the Qwen2-layout names and checked against transformers' Qwen2ForCausalLM; GGUF tensors are
written with the ``gguf`` package's own writer and quantisers and compared with its reference
dequantisers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import CheckpointError, hf_state_from_model, load_model, save_model
from openqwen.checkpoint.gguf import dequantize
from openqwen.checkpoint.gguf_file import GGUFFile
from openqwen.checkpoint.v1 import save_v1

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType

from hf_reference import randomise  # noqa: E402  (after the importorskips)


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    with torch.no_grad():
        return ref(ids).logits


# ------------------------------------------------------------------------------ first generation
V1_CONFIG = dict(vocab_size=101, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                 tie_word_embeddings=False, seq_length=48, max_position_embeddings=256)


def v1_tensors_by_hand(model: Qwen) -> dict[str, torch.Tensor]:
    """First-generation names built from the Qwen2-layout tensors (not from openqwen's v1 code)."""
    hf = {k: v.detach().clone() for k, v in hf_state_from_model(model).items()}
    out = {"transformer.wte.weight": hf["model.embed_tokens.weight"], "transformer.ln_f.weight": hf["model.norm.weight"],
           "lm_head.weight": hf["lm_head.weight"]}
    for i in range(model.config.num_hidden_layers):
        p, h = f"transformer.h.{i}.", f"model.layers.{i}."
        out[p + "ln_1.weight"] = hf[h + "input_layernorm.weight"]
        out[p + "ln_2.weight"] = hf[h + "post_attention_layernorm.weight"]
        out[p + "attn.c_attn.weight"] = torch.cat([hf[h + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[p + "attn.c_attn.bias"] = torch.cat([hf[h + f"self_attn.{n}_proj.bias"] for n in "qkv"])
        out[p + "attn.c_proj.weight"] = hf[h + "self_attn.o_proj.weight"]
        out[p + "mlp.w1.weight"] = hf[h + "mlp.up_proj.weight"]  # w1: up
        out[p + "mlp.w2.weight"] = hf[h + "mlp.gate_proj.weight"]  # w2: gate (SiLU applied to it)
        out[p + "mlp.c_proj.weight"] = hf[h + "mlp.down_proj.weight"]
    return out


def v1_config_json(c: QwenConfig, style: str) -> dict:
    """config.json as the September (v1.1) or the August 2023 release spelled it."""
    common = {"architectures": ["QWenLMHeadModel"], "model_type": "qwen", "kv_channels": c.head_dim,
              "rotary_emb_base": c.rope_theta, "rotary_pct": 1.0, "layer_norm_epsilon": c.rms_norm_eps,
              "seq_length": c.seq_length, "use_dynamic_ntk": True, "use_logn_attn": True, "no_bias": True,
              "tie_word_embeddings": False, "use_flash_attn": "auto", "bf16": False}
    if style == "v1.1":
        return {**common, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                "num_attention_heads": c.num_attention_heads, "num_hidden_layers": c.num_hidden_layers,
                "intermediate_size": 2 * c.intermediate_size, "max_position_embeddings": c.max_position_embeddings}
    return {**common, "vocab_size": c.vocab_size - 7, "padded_vocab_size": c.vocab_size, "n_embd": c.hidden_size,
            "n_head": c.num_attention_heads, "n_layer": c.num_hidden_layers,
            "ffn_hidden_size": 2 * c.intermediate_size, "n_positions": c.max_position_embeddings,
            "embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.1, "params_dtype": "torch.bfloat16"}


def write_v1(folder, model: Qwen, style: str, fmt: str) -> None:
    folder.mkdir()
    tensors = {k: v.contiguous() for k, v in v1_tensors_by_hand(model).items()}
    (folder / "config.json").write_text(json.dumps(v1_config_json(model.config, style)))
    if fmt == "safetensors":
        save_file(tensors, str(folder / "model.safetensors"))
    else:  # two .bin shards with an index, as the release shipped
        names = sorted(tensors)
        shards = {"pytorch_model-00001-of-00002.bin": names[: len(names) // 2],
                  "pytorch_model-00002-of-00002.bin": names[len(names) // 2 :]}
        for i, (shard, keys) in enumerate(shards.items()):  # the second in the pre-zipfile pickle format
            torch.save({k: tensors[k] for k in keys}, folder / shard, _use_new_zipfile_serialization=i == 0)
        index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
        (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("style,fmt", [("v1.1", "safetensors"), ("aug2023", "bin")])
def test_first_generation_folder_is_the_same_function_as_its_qwen2_twin(tmp_path, style, fmt):
    torch.manual_seed(0)
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)))
    save_model(model, tmp_path / "qwen2")
    write_v1(tmp_path / "v1", model, style, fmt)

    with pytest.warns(UserWarning, match=r"use_dynamic_ntk=True, use_logn_attn=True.*seq_length=48"):
        loaded = load_model(tmp_path / "v1")
    c = loaded.config
    assert (c.intermediate_size, c.num_key_value_heads, c.vocab_size) == (80, 4, 101)  # half of the stored 160
    assert (c.seq_length, c.use_dynamic_ntk, c.use_logn_attn) == (48, False, False)
    ids = torch.randint(0, 101, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded(ids)
        twin = load_model(tmp_path / "qwen2")(ids)
    torch.testing.assert_close(ours, twin, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, hf_logits(tmp_path / "qwen2", ids), rtol=0, atol=1e-4)


def test_first_generation_export_round_trip(tmp_path):
    torch.manual_seed(2)
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)), seed=2)
    save_v1(model, tmp_path / "v1")
    cfg = json.loads((tmp_path / "v1" / "config.json").read_text())
    assert cfg["architectures"] == ["QWenLMHeadModel"] and cfg["intermediate_size"] == 160
    ids = torch.randint(0, 101, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "v1")(ids), model(ids), rtol=0, atol=0)
    gqa = Qwen(QwenConfig(**{**V1_CONFIG, "num_key_value_heads": 2}))
    with pytest.raises(CheckpointError, match="grouped-query"):
        save_v1(gqa, tmp_path / "gqa")


def test_first_generation_errors_name_the_problem(tmp_path):
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)))
    write_v1(tmp_path / "v1", model, "v1.1", "safetensors")
    tensors = v1_tensors_by_hand(model)

    missing = {k: v.contiguous() for k, v in tensors.items() if k != "transformer.h.1.mlp.w2.weight"}
    save_file(missing, str(tmp_path / "v1" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"transformer\.h\.1\.mlp\.w2\.weight"):
        load_model(tmp_path / "v1")

    extra = {**{k: v.contiguous() for k, v in tensors.items()}, "transformer.h.0.mlp.c_proj.bias": torch.zeros(64)}
    save_file(extra, str(tmp_path / "v1" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"no_bias.*transformer\.h\.0\.mlp\.c_proj\.bias"):
        load_model(tmp_path / "v1")

    bad = {k: v.contiguous() for k, v in tensors.items()}
    bad["transformer.h.0.attn.c_proj.weight"] = torch.zeros(64, 32)
    save_file(bad, str(tmp_path / "v1" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"layers\.0\.self_attn\.o_proj\.weight.*\(64, 32\)"):
        load_model(tmp_path / "v1")

    cfg = v1_config_json(model.config, "v1.1")
    del cfg["num_hidden_layers"]
    (tmp_path / "v1" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_hidden_layers.*n_layer"):
        load_model(tmp_path / "v1")


# ------------------------------------------------------------------------------ GGUF dequantising
FAST_TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
# byte offsets of the float16 scale fields inside one block of each type
SCALE_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q4_K": [0, 2],
                "Q5_K": [0, 2], "Q6_K": [208], "Q2_K": [80, 82], "Q3_K": [108]}


def random_blocks(qtype: str, n_blocks: int, seed: int = 0) -> np.ndarray:
    """Random quantised blocks with finite, modest float16 scales (random bytes elsewhere)."""
    rng = np.random.default_rng(seed)
    block, size = gguf.GGML_QUANT_SIZES[Q[qtype]]
    raw = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        scales = rng.uniform(-1e-2, 1e-2, n_blocks).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", FAST_TYPES + ["Q2_K", "Q3_K"])  # the last two: numpy fallback
def test_dequantize_is_bit_exact_with_the_gguf_reference(qtype):
    block = gguf.GGML_QUANT_SIZES[Q[qtype]][0]
    raw = random_blocks(qtype, 3 * 512, seed=len(qtype) + sum(map(ord, qtype)))
    shape = (6, 256 * block)  # 6 rows of 256 blocks
    ref = gguf.quants.dequantize(raw.reshape(6, -1), Q[qtype])
    ours = dequantize(torch.from_numpy(raw.reshape(-1).copy()), Q[qtype].value, shape)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == shape
    assert np.array_equal(ours.numpy(), ref), f"{qtype}: max diff {np.abs(ours.numpy() - ref).max()}"


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
def test_dequantize_float_types(qtype):
    x = np.random.default_rng(3).standard_normal((5, 64)).astype(np.float32)
    raw = gguf.quants.quantize(x, Q[qtype])
    ref = gguf.quants.dequantize(raw, Q[qtype])
    ours = dequantize(raw, Q[qtype].value, (5, 64))
    assert np.array_equal(ours.numpy(), ref)
    assert np.abs(ref - x).max() < (1e-2 if qtype == "BF16" else 1e-3)


def test_dequantize_rejects_bytes_that_do_not_fit_the_shape():
    with pytest.raises(CheckpointError, match=r"Q8_0 data of 68 bytes does not hold a tensor of shape \(3, 32\)"):
        dequantize(np.zeros(68, np.uint8), Q.Q8_0.value, (3, 32))


# ------------------------------------------------------------------------------ tiny GGUF models
GGUF_CONFIG = dict(vocab_size=97, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, rope_theta=1e6, seq_length=128, max_position_embeddings=128)
# GGUF tensor -> (Qwen2 name, storage type). Quantised types with a gguf quantiser get real quantised
# weights; Q4_K and Q6_K (no quantiser in the gguf package) get random blocks of their own.
LAYER_TYPES = {"attn_q.weight": ("self_attn.q_proj.weight", "Q8_0"), "attn_k.weight": ("self_attn.k_proj.weight", "F16"),
               "attn_v.weight": ("self_attn.v_proj.weight", "BF16"), "attn_q.bias": ("self_attn.q_proj.bias", "F32"),
               "attn_k.bias": ("self_attn.k_proj.bias", "F32"), "attn_v.bias": ("self_attn.v_proj.bias", "F32"),
               "attn_output.weight": ("self_attn.o_proj.weight", "Q5_0"), "ffn_gate.weight": ("mlp.gate_proj.weight", "Q4_K"),
               "ffn_up.weight": ("mlp.up_proj.weight", "Q8_0"), "ffn_down.weight": ("mlp.down_proj.weight", "Q6_K"),
               "attn_norm.weight": ("input_layernorm.weight", "F32"), "ffn_norm.weight": ("post_attention_layernorm.weight", "F32")}


def write_gguf(path, model: Qwen, all_f32: bool = False, arch: str = "qwen2", bad_shape: str | None = None) -> dict:
    """Write ``model`` with GGUFWriter; return the dequantised reference weights under Qwen2 names."""
    c = model.config
    hf = {k: v.detach().float().numpy() for k, v in hf_state_from_model(model).items()}
    names = {"token_embd.weight": ("model.embed_tokens.weight", "Q8_0"), "output_norm.weight": ("model.norm.weight", "F32")}
    if not c.tie_word_embeddings:
        names["output.weight"] = ("lm_head.weight", "F16")
    for i in range(c.num_hidden_layers):
        for g, (h, t) in LAYER_TYPES.items():
            names[f"blk.{i}.{g}"] = (f"model.layers.{i}.{h}", t)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_token_list([f"tok{i}" for i in range(c.vocab_size)])
    reference = {}
    for k, (name, qtype) in enumerate(names.items()):
        hf_name, qname = qtype
        x = hf[hf_name]
        if name == bad_shape:
            x = x[: x.shape[0] // 2]
        qname = "F32" if all_f32 else qname
        if qname in ("Q4_K", "Q6_K"):
            rows, cols = x.shape
            raw = random_blocks(qname, rows * cols // 256, seed=k).reshape(rows, -1)
            reference[hf_name] = gguf.quants.dequantize(raw, Q[qname])
            w.add_tensor(name, raw, raw_dtype=Q[qname])
        elif qname == "F32":
            reference[hf_name] = x
            w.add_tensor(name, x)
        else:
            raw = gguf.quants.quantize(x, Q[qname])
            reference[hf_name] = gguf.quants.dequantize(raw, Q[qname])
            w.add_tensor(name, raw, raw_dtype=Q[qname])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return reference


def reference_logits(model: Qwen, reference: dict, ids: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen2ForCausalLM with the gguf package's dequantised weights."""
    c = model.config
    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, max_position_embeddings=c.max_position_embeddings,
        attn_implementation="eager")).eval()
    missing, unexpected = hf.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in reference.items()},
                                             strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if c.tie_word_embeddings:
        hf.tie_weights()
    with torch.no_grad():
        return hf(ids).logits


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_gguf_matches_the_dequantised_reference(tmp_path, tied):
    torch.manual_seed(4)
    model = randomise(Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=tied)), seed=4)
    reference = write_gguf(tmp_path / "m.gguf", model)
    loaded = load_model(tmp_path / "m.gguf")
    c = loaded.config
    assert (c.hidden_size, c.intermediate_size, c.num_key_value_heads, c.vocab_size) == (256, 512, 2, 97)
    assert c.tie_word_embeddings == tied and c.rope_theta == 1e6 and c.qkv_bias
    # every stored tensor arrives exactly as the gguf package dequantises it
    state = hf_state_from_model(loaded)
    for name, ref in reference.items():
        assert np.array_equal(state[name].detach().numpy(), ref), name
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = loaded(ids)
    torch.testing.assert_close(ours, reference_logits(model, reference, ids), rtol=0, atol=1e-4)
    bf16 = load_model(tmp_path / "m.gguf", dtype="bfloat16")
    assert bf16.embed_tokens.weight.dtype == torch.bfloat16


def test_f32_gguf_loads_exactly(tmp_path):
    torch.manual_seed(6)
    model = randomise(Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=False)), seed=6)
    write_gguf(tmp_path / "m.gguf", model, all_f32=True)
    loaded = load_model(tmp_path / "m.gguf")
    for (name, ours), (_, theirs) in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert torch.equal(ours, theirs), name


def test_gguf_metadata_reader(tmp_path):
    model = Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=True))
    write_gguf(tmp_path / "m.gguf", model, all_f32=True)
    with GGUFFile(tmp_path / "m.gguf") as f:
        assert f.architecture == "qwen2" and f.metadata["qwen2.block_count"] == 2
        tokens = f.metadata["tokenizer.ggml.tokens"]
        assert len(tokens) == 97 and tokens[5] == "tok5" and tokens.tolist()[-1] == "tok96"
        assert f.tensors["blk.1.ffn_down.weight"].shape == (256, 512)
        assert "output.weight" not in f.tensors
    with pytest.raises(ValueError, match="closed"):
        tokens[0]


def test_gguf_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        load_model(tmp_path / "nothing.gguf")

    model = Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=True))
    write_gguf(tmp_path / "llama.gguf", model, all_f32=True, arch="llama")
    with pytest.raises(CheckpointError, match="architecture 'llama'.*'qwen2'"):
        load_model(tmp_path / "llama.gguf")

    write_gguf(tmp_path / "bad.gguf", model, all_f32=True, bad_shape="blk.1.attn_k.weight")
    with pytest.raises(CheckpointError, match=r"blk\.1\.attn_k\.weight.*\(64, 256\).*\(128, 256\)"):
        load_model(tmp_path / "bad.gguf")

    (tmp_path / "text.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_model(tmp_path / "text.gguf")

    good = (tmp_path / "llama.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_model(tmp_path / "cut.gguf")


def test_first_generation_gguf_is_the_same_function(tmp_path):
    """llama.cpp's ``qwen`` architecture: names from the gguf package's own tensor map, metadata as
    llama.cpp's converter writes it (the config's doubled FFN size in feed_forward_length)."""
    torch.manual_seed(7)
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)), seed=7)
    c = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN, c.num_hidden_layers)
    w = gguf.GGUFWriter(str(tmp_path / "v1.gguf"), "qwen")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(2 * c.intermediate_size)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    for name, t in v1_tensors_by_hand(model).items():
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with GGUFFile(tmp_path / "v1.gguf") as f:
        assert {"blk.0.attn_qkv.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight"} <= set(f.tensors)
    loaded = load_model(tmp_path / "v1.gguf")
    assert loaded.config.intermediate_size == 80 and loaded.config.num_key_value_heads == 4
    ids = torch.randint(0, 101, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
