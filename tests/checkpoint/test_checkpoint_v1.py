"""First-generation folders (QWenLMHeadModel): both config spellings, safetensors and .bin pickles,
checked against their Qwen2-layout twin in transformers; export; errors; long-context settings."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import CheckpointError, load_model, save_model
from openqwen.checkpoint.v1 import save_v1

transformers = pytest.importorskip("transformers")

from checkpoint_helpers import V1_CONFIG, hf_logits, v1_config_json, v1_tensors_by_hand, write_v1  # noqa: E402
from hf_reference import randomise  # noqa: E402


@pytest.mark.parametrize("style,fmt", [("v1.1", "safetensors"), ("aug2023", "bin")])
def test_first_generation_folder_is_the_same_function_as_its_qwen2_twin(tmp_path, style, fmt):
    torch.manual_seed(0)
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)))
    save_model(model, tmp_path / "qwen2")
    write_v1(tmp_path / "v1", model, style, fmt)

    loaded = load_model(tmp_path / "v1")
    c = loaded.config
    assert (c.intermediate_size, c.num_key_value_heads, c.vocab_size) == (80, 4, 101)  # half of the stored 160
    assert (c.seq_length, c.use_dynamic_ntk, c.use_logn_attn, c.rope_update) == (48, True, True, "prefill")
    ids = torch.randint(0, 101, (2, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = loaded(ids)
        twin = load_model(tmp_path / "qwen2")(ids)
    torch.testing.assert_close(ours, twin, rtol=0, atol=1e-6)  # up to seq_length NTK and LogN change nothing
    torch.testing.assert_close(ours, hf_logits(tmp_path / "qwen2", ids), rtol=0, atol=1e-4)
    # past it they act as released: 90 tokens = alpha 3, so RoPE base * 3^(d/(d-2)), queries times LogN
    long_ids = torch.randint(0, 101, (1, 90), generator=torch.Generator().manual_seed(2))
    d = c.head_dim
    released = Qwen(c.replace(use_dynamic_ntk=False, rope_theta=c.rope_theta * 3 ** (d / (d - 2)))).eval()
    released.load_state_dict(loaded.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded(long_ids), released(long_ids), rtol=0, atol=1e-6)
        assert (loaded(long_ids) - load_model(tmp_path / "qwen2")(long_ids)).abs().max() > 1e-3  # and do act


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


V1_REFUSED = {"rotary_pct": 0.5, "no_bias": False, "scale_attn_weights": False, "use_cache_quantization": True}


@pytest.mark.parametrize("field", V1_REFUSED)
def test_first_generation_settings_openqwen_cannot_honour_are_refused(tmp_path, field):
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)))
    write_v1(tmp_path / "v1", model, "v1.1", "safetensors")
    cfg = {**v1_config_json(model.config, "v1.1"), field: V1_REFUSED[field]}
    (tmp_path / "v1" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=f"{field} {V1_REFUSED[field]!r} is not supported"):
        load_model(tmp_path / "v1")


def test_first_generation_precision_flags_choose_the_default_dtype(tmp_path):
    model = randomise(Qwen(QwenConfig(**V1_CONFIG)))
    write_v1(tmp_path / "v1", model, "v1.1", "safetensors")
    cfg = v1_config_json(model.config, "v1.1")
    for flags, expected in (({"bf16": True}, torch.bfloat16), ({"fp16": True}, torch.float16),
                            ({"torch_dtype": "bfloat16"}, torch.bfloat16), ({}, torch.float32)):
        (tmp_path / "v1" / "config.json").write_text(json.dumps({**cfg, "bf16": False, **flags}))
        assert load_model(tmp_path / "v1").embed_tokens.weight.dtype == expected, flags
    assert load_model(tmp_path / "v1", dtype="float32").embed_tokens.weight.dtype == torch.float32

