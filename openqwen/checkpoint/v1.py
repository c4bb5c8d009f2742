"""First-generation Qwen checkpoints (``QWenLMHeadModel``, the Qwen Technical Report's release).

Those Hugging Face folders (``trust_remote_code`` models) name the tensors as :data:`V1_NAMES` says:
``transformer.wte`` / ``transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.w1, mlp.w2,
mlp.c_proj}`` / ``transformer.ln_f`` / ``lm_head``. ``c_attn`` is already fused Q | K | V, as in
openqwen; the release computes ``c_proj(w1(x) * silu(w2(x)))``, so ``w2`` is the gate and ``w1`` the up
projection.

config.json comes in two spellings. The September 2023 release (v1.1) uses ``hidden_size``,
``num_attention_heads``, ``num_hidden_layers``, ``intermediate_size``, ``max_position_embeddings``;
the August 2023 release used GPT-2 names: ``n_embd``, ``n_head``, ``n_layer``, ``ffn_hidden_size``,
``n_positions`` and ``padded_vocab_size``. Both store the FFN width as *twice* the SwiGLU branch
width (22016 for the 7B model, whose branches are 11008 wide). Shared names: ``kv_channels`` (head
dim), ``rotary_emb_base``, ``rotary_pct`` (must be 1), ``layer_norm_epsilon``, ``seq_length``
(training length, where dynamic NTK and LogN switch on), ``use_dynamic_ntk``, ``use_logn_attn``
(the release's long-context switches, both true in the released configs and in its config class's
defaults: loaded as they are, so a first-generation model behaves like the release past
``seq_length`` too), ``no_bias`` (must be true),
``scale_attn_weights`` (must be true), ``use_cache_quantization`` (must be false),
``tie_word_embeddings``, and the precision flags ``bf16`` / ``fp16`` / ``fp32``.

Weights are read from safetensors (one file or sharded with an index) or from ``pytorch_model*.bin``
pickles (loaded with ``weights_only=True``, so no code in the file runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import QwenConfig
from ..model import Qwen
from .common import (CheckpointError, NameMap, Rename, atomic_write_text, build_model, dtype_name, indexed_shards,
                     long_context_extra, long_context_settings, read_safetensors, resolve_dtype, safetensor_files,
                     write_safetensors)

_H = "transformer.h.{i}."
V1_NAMES = NameMap(
    [
        Rename("embed_tokens.weight", ("transformer.wte.weight",)),
        Rename("norm.weight", ("transformer.ln_f.weight",)),
        Rename("lm_head.weight", ("lm_head.weight",), when="untied"),
        Rename("layers.{i}.self_attn.qkv_proj.weight", (_H + "attn.c_attn.weight",)),
        Rename("layers.{i}.self_attn.qkv_proj.bias", (_H + "attn.c_attn.bias",), when="qkv_bias"),
        Rename("layers.{i}.self_attn.o_proj.weight", (_H + "attn.c_proj.weight",)),
        Rename("layers.{i}.mlp.gate_up_proj.weight", (_H + "mlp.w2.weight", _H + "mlp.w1.weight"), split="halves"),
        Rename("layers.{i}.mlp.down_proj.weight", (_H + "mlp.c_proj.weight",)),
        Rename("layers.{i}.input_layernorm.weight", (_H + "ln_1.weight",)),
        Rename("layers.{i}.post_attention_layernorm.weight", (_H + "ln_2.weight",)),
    ],
    ignored=[r"inv_freq$"],
)
"""openqwen's parameters <-> first-generation tensor names, for loading and saving alike."""

# (v1.1 name, August-2023 name) for each field that was renamed between the releases.
_RENAMED = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
    "ffn_width_x2": ("intermediate_size", "ffn_hidden_size"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
}
# fields whose other values change the function in a way openqwen does not implement
_REQUIRED_VALUES = {"rotary_pct": 1.0, "no_bias": True, "scale_attn_weights": True, "use_cache_quantization": False}


def _field(hf: dict[str, Any], what: str, default: Any = None) -> Any:
    names = _RENAMED[what]
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is None:
        raise CheckpointError(f"first-generation config.json lacks {' / '.join(repr(n) for n in names)}")
    return default


def config_from_v1(hf: dict[str, Any], vocab_rows: int | None = None, source: str = "config.json") -> QwenConfig:
    """QwenConfig from a first-generation ``config.json`` (either spelling).

    ``vocab_rows``: rows of the stored embedding, which win over the config's vocabulary fields
    (the August release kept the tokenizer size in ``vocab_size`` and the rows in ``padded_vocab_size``).
    ``use_dynamic_ntk`` / ``use_logn_attn`` default to true when absent, as in the release's config class;
    openqwen's own long-context fields ride along under ``"openqwen"``.
    """
    hidden = int(_field(hf, "hidden_size"))
    heads = int(_field(hf, "num_attention_heads"))
    width_x2 = int(_field(hf, "ffn_width_x2"))
    if width_x2 % 2:
        raise CheckpointError(
            f"first-generation FFN size {width_x2} is odd; the release stores twice the SwiGLU branch width"
        )
    for key, value in _REQUIRED_VALUES.items():
        if key in hf and hf[key] != value:
            raise CheckpointError(f"{source}: {key} {hf[key]!r} is not supported (the released models use {value!r})")
    vocab = vocab_rows or hf.get("padded_vocab_size") or hf.get("vocab_size")
    if vocab is None:
        raise CheckpointError("first-generation config.json lacks 'vocab_size'")
    long_context = {
        **long_context_settings(hf.get("openqwen") or {}, source),
        # the release's QWenConfig defaults both to True; its decode steps keep the prefill's alpha
        "use_dynamic_ntk": bool(hf.get("use_dynamic_ntk", True)),
        "use_logn_attn": bool(hf.get("use_logn_attn", True)),
    }
    config = QwenConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=width_x2 // 2,
        num_hidden_layers=int(_field(hf, "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=heads,  # the first generation is plain multi-head attention
        head_dim=int(hf.get("kv_channels") or hidden // heads),
        rope_theta=float(hf.get("rotary_emb_base", 10000.0)),
        rms_norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        qkv_bias=True,  # c_attn always carries one
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(_field(hf, "max_position_embeddings", 8192)),
        seq_length=int(hf.get("seq_length", 2048)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        **long_context,
    )
    return config


def default_dtype(hf: dict[str, Any]) -> torch.dtype | None:
    """The precision the release runs: the one of ``bf16`` / ``fp16`` / ``fp32`` set, else ``torch_dtype``."""
    flags = [name for name in ("bf16", "fp16", "fp32") if hf.get(name) is True]
    if len(flags) == 1:
        return resolve_dtype(flags[0])
    name = hf.get("torch_dtype")
    return resolve_dtype(str(name)) if name in ("float32", "bfloat16", "float16") else None


def config_to_v1(c: QwenConfig, dtype: torch.dtype) -> dict[str, Any]:
    """A v1.1-style ``config.json`` (``QWenLMHeadModel``) for ``c``."""
    if c.num_key_value_heads != c.num_attention_heads:
        raise CheckpointError(
            f"the first-generation layout has no grouped-query attention; this model has "
            f"{c.num_attention_heads} query heads and {c.num_key_value_heads} key/value heads"
        )
    if not c.qkv_bias:
        raise CheckpointError("the first-generation layout always carries a QKV bias; this model has none")
    return {
        "architectures": ["QWenLMHeadModel"],
        "model_type": "qwen",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": 2 * c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "kv_channels": c.head_dim,
        "rotary_emb_base": c.rope_theta,
        "rotary_pct": 1.0,
        "layer_norm_epsilon": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "seq_length": c.seq_length,
        "use_dynamic_ntk": c.use_dynamic_ntk,
        "use_logn_attn": c.use_logn_attn,
        "no_bias": True,
        "tie_word_embeddings": c.tie_word_embeddings,
        "initializer_range": c.initializer_range,
        "emb_dropout_prob": 0.0,
        "attn_dropout_prob": 0.0,
        "scale_attn_weights": True,
        "torch_dtype": dtype_name(dtype),
        # what the release has no field for (windows, sinks, rope_update), read back by config_from_v1
        "openqwen": {k: v for k, v in long_context_extra(c).items() if k not in ("use_dynamic_ntk", "use_logn_attn")},
    }


# --------------------------------------------------------------------------------------- tensors
def read_v1_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a first-generation folder: safetensors (preferred) or ``pytorch_model*.bin``."""
    st = safetensor_files(folder, required=False)
    if st:
        return read_safetensors(st)
    bin_index = folder / "pytorch_model.bin.index.json"
    if bin_index.exists():
        bins = indexed_shards(bin_index)
    else:
        bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise CheckpointError(f"no *.safetensors or pytorch_model*.bin files in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in bins:
        try:
            # weights_only: a pickle may carry code; only tensors and plain containers are accepted
            try:
                part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # pre-zipfile pickles (torch < 1.6) cannot be memory-mapped; read them whole
                part = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 (torch raises several types for bad pickles)
            raise CheckpointError(f"cannot read {f} as a PyTorch state dict (weights only): {e}") from e
        state.update(part)
    return state


# ------------------------------------------------------------------------------------ load/save
def load_v1(folder: str | Path, hf_config: dict[str, Any] | None = None, dtype: torch.dtype | str | None = None,
            device: str | torch.device = "cpu") -> Qwen:
    """Load a first-generation (``QWenLMHeadModel``) folder. ``dtype`` None: the precision the config
    asks for (:func:`default_dtype`), else the stored tensors' own."""
    folder = Path(folder)
    source = str(folder / "config.json")
    if hf_config is None:
        if not (folder / "config.json").exists():
            raise CheckpointError(f"{folder} has no config.json")
        hf_config = json.loads((folder / "config.json").read_text())
    tensors = read_v1_tensors(folder)
    if "transformer.wte.weight" not in tensors:
        raise CheckpointError(f"{folder}: first-generation checkpoint lacks tensor 'transformer.wte.weight'")
    biases = sorted(k for k in tensors if k.endswith(".bias") and ".attn.c_attn." not in k)
    if biases:
        raise CheckpointError(f"{folder} has biases outside c_attn (a config with no_bias=false, which the "
                              f"released models never use): {biases[:5]}")
    config = config_from_v1(hf_config, vocab_rows=tensors["transformer.wte.weight"].shape[0], source=source)
    state = V1_NAMES.to_ours(tensors, config, str(folder))
    return build_model(config, state, resolve_dtype(dtype) or default_dtype(hf_config), device)


def v1_state_from_model(model: Qwen) -> dict[str, torch.Tensor]:
    """The model's weights under first-generation names (views of the parameters)."""
    return V1_NAMES.to_theirs(model.state_dict(keep_vars=True), model.config)


def save_v1(model: Qwen, folder: str | Path) -> None:
    """Export in the first-generation layout (v1.1 config names, one safetensors file).

    Useful for tools that only know ``QWenLMHeadModel``; the model must be plain multi-head
    attention with a QKV bias, as that layout has no other form.
    """
    folder = Path(folder)
    config = config_to_v1(model.config, model.embed_tokens.weight.dtype)  # validates before anything is written
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(v1_state_from_model(model), folder, max_shard_bytes=1 << 62)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
