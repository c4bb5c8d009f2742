"""The Hugging Face Qwen2 layout (``Qwen2ForCausalLM``: Qwen1.5 / 2 / 2.5 and openqwen's own output).

A folder holds ``config.json`` and safetensors (one file, or shards with
``model.safetensors.index.json``). openqwen-only settings ride along under ``"openqwen"`` in
config.json, which transformers ignores.

Every config field that changes the function is read, in both spellings transformers has used
(4.x: top-level ``rope_theta`` and ``rope_scaling``; 5.x: ``rope_parameters``). What openqwen cannot
honour is refused with a :class:`CheckpointError` rather than defaulted: RoPE scaling other than
``default`` / ``linear`` / ``dynamic`` / ``yarn``, activations other than SiLU, partial rotary
embeddings, quantised weights. Fields absent from config.json take transformers' own defaults.

Long context, as transformers runs it: ``rope_scaling`` (or 5.x ``rope_parameters``) of type linear,
dynamic or yarn becomes ``QwenConfig.rope_scaling`` (dynamic with ``rope_update="stale"``: new tokens
get the current length's base, cached keys keep theirs, as transformers' dynamic RoPE does), and
sliding-window attention in use (``use_sliding_window``, on the layers ``layer_types`` marks, by default
those from ``max_window_layers`` on) becomes ``window_sizes``. openqwen's own long-context fields (NTK,
LogN, windows, sinks) ride along under ``"openqwen"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..config import QwenConfig
from ..model import Qwen
from .common import (CheckpointError, NameMap, Rename, build_model, dtype_name, long_context_extra, long_context_settings,
                     read_safetensors,
                     resolve_dtype, safetensor_files, atomic_write_text, write_safetensors)

_L = "model.layers.{i}."
QWEN2_NAMES = NameMap(
    [
        Rename("embed_tokens.weight", ("model.embed_tokens.weight",)),
        Rename("norm.weight", ("model.norm.weight",)),
        Rename("lm_head.weight", ("lm_head.weight",), when="untied"),
        Rename("layers.{i}.self_attn.qkv_proj.weight",
               tuple(_L + f"self_attn.{n}_proj.weight" for n in "qkv"), split="qkv"),
        Rename("layers.{i}.self_attn.qkv_proj.bias",
               tuple(_L + f"self_attn.{n}_proj.bias" for n in "qkv"), split="qkv", when="qkv_bias"),
        Rename("layers.{i}.self_attn.o_proj.weight", (_L + "self_attn.o_proj.weight",)),
        Rename("layers.{i}.mlp.gate_up_proj.weight", (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"),
               split="halves"),
        Rename("layers.{i}.mlp.down_proj.weight", (_L + "mlp.down_proj.weight",)),
        Rename("layers.{i}.input_layernorm.weight", (_L + "input_layernorm.weight",)),
        Rename("layers.{i}.post_attention_layernorm.weight", (_L + "post_attention_layernorm.weight",)),
    ],
    ignored=[r"rotary_emb\.inv_freq$"],
)
"""openqwen's parameters <-> Qwen2 tensor names, for loading and saving alike."""

ARCHITECTURE = "Qwen2ForCausalLM"
TRANSFORMERS_ROPE_THETA = 10000.0
"""transformers' Qwen2Config default, for a config.json that names no RoPE base."""


# ------------------------------------------------------------------------------ config mapping
def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> QwenConfig:
    """QwenConfig from a Qwen2 ``config.json``; CheckpointError for what openqwen cannot honour."""
    archs = hf.get("architectures") or []
    if (archs and ARCHITECTURE not in archs) or hf.get("model_type", "qwen2") != "qwen2":
        raise CheckpointError(
            f"{source} names architecture {archs or hf.get('model_type')}; openqwen reads {ARCHITECTURE} folders "
            "(model_type qwen2) and first-generation QWenLMHeadModel folders"
        )

    def need(key: str) -> Any:
        if hf.get(key) is None:
            raise CheckpointError(f"{source} lacks {key!r}")
        return hf[key]

    if hf.get("quantization_config"):
        method = hf["quantization_config"].get("quant_method", "?")
        raise CheckpointError(f"{source}: quantised weights ({method}) are not supported; give a dense checkpoint")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):  # transformers' two names of one function
        raise CheckpointError(f"{source}: hidden_act {act!r} is not supported (Qwen's SwiGLU uses 'silu')")
    layers = int(need("num_hidden_layers"))
    windows = _sliding_windows(hf, layers, source)
    extra = hf.get("openqwen") or {}
    heads = int(need("num_attention_heads"))
    scaling = _rope_scaling(hf)
    long_context = {"rope_scaling": scaling, "window_sizes": windows}
    if scaling and scaling["rope_type"] == "dynamic":
        long_context["rope_update"] = "stale"  # transformers' dynamic RoPE leaves cached keys as they were
    long_context.update(long_context_settings(extra, source))
    config = QwenConfig(
        vocab_size=int(need("vocab_size")),
        hidden_size=int(need("hidden_size")),
        intermediate_size=int(need("intermediate_size")),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or need("hidden_size") // heads),
        rope_theta=_rope_theta(hf, source),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        # transformers' Qwen2 always has the QKV bias; attention_bias (and openqwen's older spelling) can drop it
        qkv_bias=bool(hf.get("attention_bias", extra.get("qkv_bias", True))),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 32768)),
        seq_length=int(extra.get("seq_length", hf.get("max_position_embeddings", 32768))),
        dropout=float(hf.get("attention_dropout", 0.0)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        **long_context,
    )
    return config


ROPE_SCALINGS = ("default", "linear", "dynamic", "yarn")


def _rope_scaling(hf: dict[str, Any]) -> dict[str, Any] | None:
    """``QwenConfig.rope_scaling`` from either spelling (None for default RoPE); _rope_theta checked it."""
    merged = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    kind = merged.pop("rope_type", merged.pop("type", "default"))
    merged.pop("type", None)
    if kind == "default":
        return None
    rest = {k: v for k, v in merged.items() if k not in ("rope_theta", "partial_rotary_factor")}
    return {"rope_type": kind, **rest}


def _rope_theta(hf: dict[str, Any], source: str) -> float:
    """The RoPE base from either spelling; refuses RoPE scalings openqwen does not implement."""
    params = hf.get("rope_parameters") or {}
    legacy = hf.get("rope_scaling") or {}
    if any(isinstance(v, dict) for v in params.values()):
        raise CheckpointError(f"{source}: per-layer-type rope_parameters are not supported")
    kinds = set()
    for where in (params, legacy):
        kind = where.get("rope_type", where.get("type", "default"))
        if kind not in ROPE_SCALINGS:
            raise CheckpointError(
                f"{source} asks for RoPE scaling {kind!r}; openqwen implements {', '.join(ROPE_SCALINGS)}. "
                "Remove the scaling from config.json to run within the original context length"
            )
        if where:
            kinds.add(kind)
    if len(kinds) > 1:
        raise CheckpointError(f"{source} names two RoPE scalings, rope_scaling and rope_parameters: {sorted(kinds)}")
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if float(partial) != 1.0:
        raise CheckpointError(f"{source}: partial_rotary_factor {partial} is not supported (Qwen2 rotates every dim)")
    thetas = {float(t) for t in (params.get("rope_theta"), hf.get("rope_theta")) if t is not None}
    if len(thetas) > 1:
        raise CheckpointError(f"{source} gives two RoPE bases, rope_theta and rope_parameters.rope_theta: {sorted(thetas)}")
    return thetas.pop() if thetas else TRANSFORMERS_ROPE_THETA


def _sliding_windows(hf: dict[str, Any], layers: int, source: str) -> list[int | None] | None:
    """Sliding-window attention as transformers applies it: a window only when ``use_sliding_window``,
    on the layers ``layer_types`` marks (by default those from ``max_window_layers`` on); as
    ``window_sizes`` (None when no layer has one)."""
    types = hf.get("layer_types")
    if types is not None:
        if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
            raise CheckpointError(f"{source}: layer_types {types} is not {layers} of full_attention / sliding_attention")
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    if window is None:
        return None
    if types is None:
        first = int(hf.get("max_window_layers", 28))  # transformers' Qwen2Config default
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(layers)]
    if not isinstance(window, int) or window < 1:
        raise CheckpointError(f"{source}: sliding_window {window!r} is not a positive number of tokens")
    sizes = [window if t == "sliding_attention" else None for t in types]
    return sizes if any(sizes) else None


def default_dtype(hf: dict[str, Any], source: str = "config.json") -> torch.dtype | None:
    """The dtype config.json asks for (``dtype`` in transformers 5, ``torch_dtype`` before)."""
    name = hf.get("dtype") or hf.get("torch_dtype")
    if name is None:
        return None
    try:
        return resolve_dtype(str(name))
    except ValueError:
        raise CheckpointError(f"{source}: dtype {name!r} is not one openqwen runs; pass dtype= explicitly") from None


def config_to_hf(c: QwenConfig, dtype: torch.dtype) -> dict[str, Any]:
    """A ``Qwen2ForCausalLM`` config.json, readable by transformers 4 and 5 (and by :func:`config_from_hf`)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "qwen2",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rope_theta": c.rope_theta,  # transformers 5 reads this spelling too (into rope_parameters)
        "rms_norm_eps": c.rms_norm_eps,
        "attention_bias": c.qkv_bias,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "attention_dropout": c.dropout,
        "initializer_range": c.initializer_range,
        "use_sliding_window": False,
        "torch_dtype": dtype_name(dtype),
        # transformers reads rope_scaling; the rest of the long-context settings are openqwen's own
        **({"rope_scaling": dict(c.rope_scaling)} if c.rope_scaling else {}),
        "openqwen": {"seq_length": c.seq_length, "rope_update": c.rope_update,
                     **{k: v for k, v in long_context_extra(c).items() if k != "rope_scaling"}},
    }


def transformers_config(c: QwenConfig, **extra: Any):
    """The same model as a ``transformers.Qwen2Config`` (tests and benchmarks build their reference
    from it; ``extra`` passes e.g. ``attn_implementation``). Imports transformers on call."""
    import transformers  # noqa: PLC0415 (a test/benchmark-only dependency)

    rope = {"rope_type": "default", **(c.rope_scaling or {}), "rope_theta": c.rope_theta}
    windows = {w for w in (c.window_sizes or []) if w is not None}
    if len(windows) > 1 or c.attention_sinks or c.use_dynamic_ntk or c.use_logn_attn:
        raise ValueError("transformers' Qwen2 has one sliding window and no sinks, dynamic NTK or LogN")
    sliding = {}
    if windows:
        sliding = dict(use_sliding_window=True, sliding_window=windows.pop(),
                       layer_types=["full_attention" if w is None else "sliding_attention" for w in c.window_sizes])
    return transformers.Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rope_parameters=rope,
        rms_norm_eps=c.rms_norm_eps, tie_word_embeddings=c.tie_word_embeddings,
        max_position_embeddings=c.max_position_embeddings, **sliding, **extra,
    )


# ------------------------------------------------------------------------------ tensors
def hf_state_from_model(model: Qwen) -> dict[str, torch.Tensor]:
    """The model's weights under Qwen2 names (fused projections split; views of the parameters)."""
    return QWEN2_NAMES.to_theirs(model.state_dict(keep_vars=True), model.config)


def load_hf(folder: Path, hf_config: dict[str, Any], dtype: torch.dtype | None, device: str | torch.device) -> Qwen:
    """A Qwen2-layout folder. ``dtype`` None: the config's dtype, else the stored tensors' own."""
    source = str(folder / "config.json")
    config = config_from_hf(hf_config, source)
    dtype = dtype or default_dtype(hf_config, source)
    state = QWEN2_NAMES.to_ours(read_safetensors(safetensor_files(folder)), config, str(folder))
    return build_model(config, state, dtype, device)


def save_hf(model: Qwen, folder: str | Path, max_shard_bytes: int = 4 << 30) -> None:
    """config.json and safetensors (sharded past ``max_shard_bytes``), each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(hf_state_from_model(model), folder, max_shard_bytes)
    config = config_to_hf(model.config, model.embed_tokens.weight.dtype)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
