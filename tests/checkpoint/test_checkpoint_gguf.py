"""GGUF files: dequantisers, tiny models, the header reader, metadata and errors.

References are independent of the code under test: GGUF tensors are written with the ``gguf``
package's own writer and quantisers and compared with its reference dequantisers, logits with
transformers' Qwen2ForCausalLM on those dequantised weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import CheckpointError, hf_state_from_model, load_model
from openqwen.checkpoint.gguf import dequantize
from openqwen.checkpoint.gguf_file import GGUFFile

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
Q = gguf.GGMLQuantizationType

from checkpoint_helpers import V1_CONFIG, v1_tensors_by_hand  # noqa: E402  (after the importorskips)
from hf_reference import randomise  # noqa: E402


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


def write_gguf(path, model: Qwen, all_f32: bool = False, arch: str = "qwen2", bad_shape: str | None = None,
               metadata=None, eps: bool = True, embed_type: str = "Q8_0") -> dict:
    """Write ``model`` with GGUFWriter; return the dequantised reference weights under Qwen2 names.

    ``metadata``: called with the writer to add fields; ``eps=False`` leaves out the RMSNorm epsilon;
    ``embed_type``: the storage type of ``token_embd``."""
    c = model.config
    hf = {k: v.detach().float().numpy() for k, v in hf_state_from_model(model).items()}
    names = {"token_embd.weight": ("model.embed_tokens.weight", embed_type), "output_norm.weight": ("model.norm.weight", "F32")}
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
    if eps:
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
    if metadata is not None:
        metadata(w)
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
    for (name, low), (_, full) in zip(bf16.state_dict().items(), loaded.state_dict().items()):
        assert low.dtype == torch.bfloat16 and torch.equal(low, full.to(torch.bfloat16)), name


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


def test_gguf_header_is_parsed_once_per_unchanged_file(tmp_path, monkeypatch):
    """A second open of the same bytes reuses the parsed header, its strings read from the new mapping
    (the first one is closed); a rewritten file is parsed again."""
    from openqwen.checkpoint import gguf_file

    path = tmp_path / "m.gguf"
    write_gguf(path, Qwen(QwenConfig(**GGUF_CONFIG, tie_word_embeddings=True)), all_f32=True)
    parses = []
    real = GGUFFile._parse
    monkeypatch.setattr(GGUFFile, "_parse", lambda self: parses.append(self.path) or real(self))
    with GGUFFile(path) as f:
        first = f.metadata["tokenizer.ggml.tokens"].tolist()
    with GGUFFile(path) as f:
        assert f.metadata["tokenizer.ggml.tokens"].tolist() == first and f.metadata["qwen2.block_count"] == 2
    assert len(parses) == 1
    write_gguf(path, Qwen(QwenConfig(**{**GGUF_CONFIG, "num_hidden_layers": 1}, tie_word_embeddings=True)), all_f32=True)
    with GGUFFile(path) as f:
        assert f.metadata["qwen2.block_count"] == 1 and "blk.1.ffn_down.weight" not in f.tensors
    assert len(parses) == 2 and len(gguf_file._HEADERS) <= gguf_file._HEADERS_KEPT


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


def test_gguf_rope_scaling_is_read_as_transformers_rope_scaling(tmp_path):
    model = Qwen(QwenConfig(**GGUF_CONFIG))

    def yarn(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(4.0)
        w.add_rope_scaling_orig_ctx_len(32)

    write_gguf(tmp_path / "yarn.gguf", model, all_f32=True, metadata=yarn)
    c = load_model(tmp_path / "yarn.gguf").config
    assert c.rope_scaling == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    assert c.seq_length == 32

    def linear(w):
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)

    write_gguf(tmp_path / "linear.gguf", model, all_f32=True, metadata=linear)
    assert load_model(tmp_path / "linear.gguf").config.rope_scaling == {"rope_type": "linear", "factor": 2.0}


GGUF_REFUSED = {
    "longrope": (lambda w: w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE), "RoPE scaling 'longrope'"),
    "partial-rotary": (lambda w: w.add_rope_dimension_count(32), "RoPE rotates 32 of 64 head dims"),
    "value-width": (lambda w: w.add_value_length(32), "value heads of 32 dims differ from key heads of 64"),
}


@pytest.mark.parametrize("name", GGUF_REFUSED)
def test_gguf_metadata_that_openqwen_cannot_honour_is_refused(tmp_path, name):
    edit, message = GGUF_REFUSED[name]
    write_gguf(tmp_path / "m.gguf", Qwen(QwenConfig(**GGUF_CONFIG)), all_f32=True, metadata=edit)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path / "m.gguf")


def test_gguf_metadata_is_read_not_defaulted(tmp_path):
    model = randomise(Qwen(QwenConfig(**{**GGUF_CONFIG, "rms_norm_eps": 1e-5, "rope_theta": 31337.0})), seed=8)
    write_gguf(tmp_path / "m.gguf", model, all_f32=True,
               metadata=lambda w: (w.add_rope_dimension_count(64), w.add_rope_scaling_type(gguf.RopeScalingType.NONE)))
    c = load_model(tmp_path / "m.gguf").config
    # GGUF stores both as float32
    assert (c.rms_norm_eps, c.rope_theta, c.head_dim, c.max_position_embeddings) == (float(np.float32(1e-5)), 31337.0, 64, 128)
    write_gguf(tmp_path / "no-eps.gguf", model, all_f32=True, eps=False)
    with pytest.raises(CheckpointError, match="lacks the metadata field 'qwen2.attention.layer_norm_rms_epsilon'"):
        load_model(tmp_path / "no-eps.gguf")
