"""The Qwen2 layout both ways: folders saved by transformers itself load as the same function, folders
openqwen saves load in transformers, and every config field that changes the function is read in
both of transformers' spellings or refused with a clear error.

References are independent of the code under test: configs are made by the installed transformers
(``transformers.Qwen2Config``, written by its own ``save_pretrained``), and logits come from
transformers' own loading of the same folder.
"""

from __future__ import annotations

import json

import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import CheckpointError, load_model, save_model

transformers = pytest.importorskip("transformers")

from checkpoint_helpers import hf_logits  # noqa: E402  (after the importorskip)
from hf_reference import randomise  # noqa: E402

SHAPES = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)


def tiny_config(**kw) -> QwenConfig:
    return QwenConfig(**{**SHAPES, "num_hidden_layers": 3, "seq_length": 64, **kw})


def transformers_folder(folder, seed: int = 0, dtype: torch.dtype = torch.float32, **config_kw):
    """A Qwen2 folder written by transformers: its config, its model with every parameter randomised
    (so that no mapping mistake hides behind ones and zeros), its save_pretrained."""
    config = transformers.Qwen2Config(**{**SHAPES, **config_kw})
    hf = transformers.Qwen2ForCausalLM(config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.3 * noise if name.endswith("norm.weight") else 0.3 * noise)
    hf.to(dtype).save_pretrained(folder)
    return folder


IDS = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------ loading transformers' folders
@pytest.mark.parametrize("fields", [
    dict(rope_theta=31337.0, rms_norm_eps=1e-5, head_dim=24, tie_word_embeddings=False),
    dict(rope_theta=1e6, rms_norm_eps=3e-6, head_dim=8, tie_word_embeddings=True),
], ids=["theta31337-eps1e-5-head24", "theta1e6-tied-head8"])
def test_a_folder_saved_by_transformers_is_the_same_function(tmp_path, fields):
    folder = transformers_folder(tmp_path / "m", **fields)
    saved = json.loads((folder / "config.json").read_text())
    assert "rope_parameters" in saved and "rope_theta" not in saved  # transformers 5's spelling
    model = load_model(folder)
    c = model.config
    assert (c.rope_theta, c.rms_norm_eps, c.head_dim, c.tie_word_embeddings) == (
        fields["rope_theta"], fields["rms_norm_eps"], fields["head_dim"], fields["tie_word_embeddings"])
    reference = hf_logits(folder, IDS)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), reference, atol=1e-4, rtol=1e-5)
        # the bug this guards against: the default base instead of the stored one is visibly wrong
        wrong = Qwen(c.replace(rope_theta=10000.0)).eval()
        wrong.load_state_dict(model.state_dict())
        assert (wrong(IDS) - reference).abs().max() > 1e-2


def test_the_transformers_4_spelling_of_the_rope_base_reads_the_same(tmp_path):
    folder = transformers_folder(tmp_path / "m", rope_theta=31337.0, head_dim=24)
    saved = json.loads((folder / "config.json").read_text())
    saved["rope_theta"] = saved.pop("rope_parameters")["rope_theta"]  # how transformers 4 stored it
    saved["rope_scaling"] = None
    (folder / "config.json").write_text(json.dumps(saved))
    model = load_model(folder)
    assert model.config.rope_theta == 31337.0
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), hf_logits(folder, IDS), atol=1e-4, rtol=1e-5)


def test_the_config_dtype_is_the_default_load_dtype(tmp_path):
    folder = transformers_folder(tmp_path / "m", dtype=torch.bfloat16)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder)  # transformers' default dtype
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_model(folder).embed_tokens.weight.dtype == theirs.dtype == torch.bfloat16
    assert load_model(folder, dtype="float32").embed_tokens.weight.dtype == torch.float32


def test_attention_bias_false_is_honoured(tmp_path):
    model = randomise(Qwen(tiny_config(qkv_bias=False)), seed=3)
    save_model(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["attention_bias"] is False
    loaded = load_model(tmp_path)
    assert loaded.config.qkv_bias is False and loaded.layers[0].self_attn.qkv_proj.bias is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS), model(IDS), atol=0, rtol=0)


# ------------------------------------------------------------------------------ long context, as transformers
LONG_CONTEXT = {
    "yarn": dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                  "original_max_position_embeddings": 16}),
    "dynamic": dict(rope_parameters={"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0},
                    max_position_embeddings=16),
    "linear": dict(rope_parameters={"rope_type": "linear", "rope_theta": 1e6, "factor": 2.0}),
    "sliding-window": dict(use_sliding_window=True, sliding_window=7, max_window_layers=1),
}


@pytest.mark.parametrize("name", LONG_CONTEXT)
def test_rope_scaling_and_sliding_windows_load_and_match_transformers(tmp_path, name):
    """Past the scaled lengths (23 tokens > 16, windows of 7): the loaded model is transformers' function."""
    folder = transformers_folder(tmp_path / "m", **LONG_CONTEXT[name])
    model = load_model(folder)
    c = model.config
    if name == "sliding-window":
        assert c.window_sizes == [None, 7] and c.rope_scaling is None
    else:
        assert c.rope_scaling["rope_type"] == name and c.window_sizes is None
        assert c.rope_update == ("stale" if name == "dynamic" else "prefill")  # transformers' cached keys
    with torch.no_grad():
        torch.testing.assert_close(model(IDS), hf_logits(folder, IDS), atol=1e-4, rtol=1e-5)
    save_model(model, tmp_path / "again")  # and back: transformers reads rope_scaling, openqwen the rest
    assert load_model(tmp_path / "again").config == c
    if name != "sliding-window":
        with torch.no_grad():
            torch.testing.assert_close(hf_logits(tmp_path / "again", IDS), hf_logits(folder, IDS), atol=1e-5, rtol=0)


REFUSED = {
    "longrope": (dict(rope_parameters={"rope_type": "longrope", "rope_theta": 1e6, "short_factor": [1.0] * 8,
                                       "long_factor": [1.0] * 8, "original_max_position_embeddings": 64}),
                 "RoPE scaling 'longrope'"),
    "gelu": (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
}


@pytest.mark.parametrize("name", REFUSED)
def test_what_openqwen_cannot_honour_is_refused(tmp_path, name):
    fields, message = REFUSED[name]
    transformers.Qwen2Config(**SHAPES, **fields).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_a_sliding_window_that_is_switched_off_is_not_used(tmp_path):
    folder = transformers_folder(tmp_path / "m", use_sliding_window=False, sliding_window=16, max_window_layers=1)
    assert load_model(folder).config.window_sizes is None
    with torch.no_grad():
        torch.testing.assert_close(load_model(folder)(IDS), hf_logits(folder, IDS), atol=1e-4, rtol=1e-5)


def test_other_architectures_and_conflicting_bases_are_refused(tmp_path):
    transformers.Qwen2MoeConfig(**SHAPES).save_pretrained(tmp_path / "moe")
    with pytest.raises(CheckpointError, match="qwen2_moe.*Qwen2ForCausalLM"):
        load_model(tmp_path / "moe")
    transformers.Qwen2Config(**SHAPES, rope_theta=1e6).save_pretrained(tmp_path / "two")
    saved = json.loads((tmp_path / "two" / "config.json").read_text())
    (tmp_path / "two" / "config.json").write_text(json.dumps({**saved, "rope_theta": 5e5}))
    with pytest.raises(CheckpointError, match="two RoPE bases"):
        load_model(tmp_path / "two")


def test_openqwen_long_context_settings_round_trip_through_config_json(tmp_path):
    model = randomise(Qwen(tiny_config(use_dynamic_ntk=True, use_logn_attn=True, window_sizes=[8, None, 16],
                                       attention_sinks=2, rope_update="rotate")), seed=4)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config
    ids = torch.randint(0, 97, (1, 150), generator=torch.Generator().manual_seed(4))  # past seq_length 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


# ------------------------------------------------------------------------------ saving for transformers
def test_save_model_loads_in_transformers_with_same_logits(tmp_path):
    model = randomise(Qwen(tiny_config(num_key_value_heads=2, tie_word_embeddings=True, head_dim=24,
                                       rope_theta=31337.0, rms_norm_eps=1e-5)), seed=4)
    save_model(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert hf.config.rope_parameters["rope_theta"] == 31337.0 and hf.config.head_dim == 24
    ours = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(hf(IDS).logits, model(IDS), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours(IDS), model(IDS), atol=0, rtol=0)


def test_sharded_save_round_trips(tmp_path):
    model = randomise(Qwen(tiny_config()), seed=5)
    save_model(model, tmp_path, max_shard_bytes=20_000)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    loaded = load_model(tmp_path)
    for (n1, p1), (n2, p2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_folder_errors_name_the_problem(tmp_path):
    model = randomise(Qwen(tiny_config()), seed=6)
    save_model(model, tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_model(tmp_path)
    save_model(model, tmp_path)
    from safetensors.torch import load_file, save_file

    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"):
        load_model(tmp_path)
