"""Shared by the checkpoint tests: first-generation folders built by hand (from the Qwen2-layout
names, not from openqwen's v1 code) and transformers' logits on a saved folder."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import hf_state_from_model


def hf_logits(folder, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own loading of ``folder`` (fp32, eager attention) run on ``ids``."""
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    with torch.no_grad():
        return ref(ids).logits


V1_CONFIG = dict(vocab_size=101, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                 tie_word_embeddings=False, seq_length=48, max_position_embeddings=256, rope_theta=31337.0,
                 rms_norm_eps=1e-5)
"""Non-default RoPE base and epsilon, so that a field read wrongly (or not at all) changes the logits."""


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
