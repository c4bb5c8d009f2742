"""Checkpoint formats: read and write Qwen weights.

Reads
  1. a Hugging Face folder in the Qwen2 layout (``Qwen2ForCausalLM``; config.json + safetensors,
     one file or sharded with ``model.safetensors.index.json``). openqwen's own checkpoints are this
     layout too, with the openqwen-only settings kept in ``openqwen`` inside config.json;
  2. a first-generation folder (``QWenLMHeadModel``), see :mod:`openqwen.checkpoint_v1`;
  3. a ``.gguf`` file of the qwen2 architecture, see :mod:`openqwen.gguf_loader`.
Writes the Qwen2 layout, which transformers, vLLM and llama.cpp's converter all take.

Internally the model fuses Q|K|V and gate|up into single projections; this module splits and
joins them, so files always carry the standard names.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import save_file

from .config import QwenConfig
from .model import Qwen

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message names the file, tensor or field at fault."""


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from None


# ------------------------------------------------------------------------------ config mapping
def config_from_hf(hf: dict) -> QwenConfig:
    """QwenConfig from a Hugging Face ``config.json`` of the Qwen2 layout."""
    archs = hf.get("architectures") or []
    if archs and not any(a.startswith("Qwen2") for a in archs):
        raise CheckpointError(
            f"config.json names architecture {archs}; openqwen reads Qwen2ForCausalLM folders "
            "(and first-generation QWenLMHeadModel folders)"
        )
    extra = hf.get("openqwen", {})
    heads = hf["num_attention_heads"]
    return QwenConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=extra.get("qkv_bias", True),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        seq_length=extra.get("seq_length", hf.get("max_position_embeddings", 32768)),
        dropout=float(hf.get("attention_dropout", 0.0)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        use_dynamic_ntk=extra.get("use_dynamic_ntk", False),
        use_logn_attn=extra.get("use_logn_attn", False),
        window_sizes=extra.get("window_sizes"),
    )


def config_to_hf(c: QwenConfig, torch_dtype: torch.dtype) -> dict:
    """A ``Qwen2ForCausalLM`` config.json; openqwen-only settings ride along under ``openqwen``."""
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "attention_dropout": c.dropout,
        "initializer_range": c.initializer_range,
        "use_sliding_window": False,
        "torch_dtype": str(torch_dtype).removeprefix("torch."),
        "openqwen": {
            "qkv_bias": c.qkv_bias,
            "seq_length": c.seq_length,
            "use_dynamic_ntk": c.use_dynamic_ntk,
            "use_logn_attn": c.use_logn_attn,
            "window_sizes": c.window_sizes,
        },
    }


def transformers_config(c: QwenConfig, **extra):
    """The same shapes as a ``transformers.Qwen2Config`` (tests and benchmarks build their reference
    model from it; ``extra`` passes e.g. ``attn_implementation``). Imports transformers on call."""
    import transformers  # noqa: PLC0415 (a test/benchmark-only dependency)

    return transformers.Qwen2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_word_embeddings, max_position_embeddings=c.max_position_embeddings,
        **extra,
    )


# ------------------------------------------------------------------------------ tensor mapping
def hf_state_from_model(model: Qwen) -> dict[str, torch.Tensor]:
    """The model's weights under Qwen2 names (fused projections split)."""
    c = model.config
    q_w, kv_w = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": model.embed_tokens.weight,
                                    "model.norm.weight": model.norm.weight}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        for name, w in zip(("q", "k", "v"), attn.qkv_proj.weight.split([q_w, kv_w, kv_w])):
            out[p + f"self_attn.{name}_proj.weight"] = w
        if attn.qkv_proj.bias is not None:
            for name, b in zip(("q", "k", "v"), attn.qkv_proj.bias.split([q_w, kv_w, kv_w])):
                out[p + f"self_attn.{name}_proj.bias"] = b
        out[p + "self_attn.o_proj.weight"] = attn.o_proj.weight
        gate, up = mlp.gate_up_proj.weight.chunk(2)
        out[p + "mlp.gate_proj.weight"] = gate
        out[p + "mlp.up_proj.weight"] = up
        out[p + "mlp.down_proj.weight"] = mlp.down_proj.weight
        out[p + "input_layernorm.weight"] = layer.input_layernorm.weight
        out[p + "post_attention_layernorm.weight"] = layer.post_attention_layernorm.weight
    return out


def model_state_from_hf(hf: dict[str, torch.Tensor], c: QwenConfig) -> dict[str, torch.Tensor]:
    """Qwen2-named tensors -> this model's state dict (projections fused). Raises on a missing tensor."""
    def take(name: str) -> torch.Tensor:
        try:
            return hf.pop(name)
        except KeyError:
            raise CheckpointError(f"checkpoint lacks tensor {name!r}") from None

    out = {"embed_tokens.weight": take("model.embed_tokens.weight"), "norm.weight": take("model.norm.weight")}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    else:
        hf.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        q = f"layers.{i}."
        out[q + "self_attn.qkv_proj.weight"] = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        if c.qkv_bias:
            out[q + "self_attn.qkv_proj.bias"] = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        out[q + "self_attn.o_proj.weight"] = take(p + "self_attn.o_proj.weight")
        out[q + "mlp.gate_up_proj.weight"] = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")])
        out[q + "mlp.down_proj.weight"] = take(p + "mlp.down_proj.weight")
        out[q + "input_layernorm.weight"] = take(p + "input_layernorm.weight")
        out[q + "post_attention_layernorm.weight"] = take(p + "post_attention_layernorm.weight")
    leftovers = [k for k in hf if not k.endswith("rotary_emb.inv_freq")]
    if leftovers:
        raise CheckpointError(f"checkpoint has tensors the model does not use: {leftovers[:5]}")
    return out


@contextlib.contextmanager
def _skip_init() -> Iterator[None]:
    """Skip random initialisation while building a model whose weights are loaded next.

    On the meta device there is nothing to initialise, yet the first ``normal_`` call there imports
    torch's reference decompositions, which costs ~4-6 s per process. Not thread-safe: it patches the
    classes for the duration of the block.
    """
    saved = [(cls, cls.reset_parameters) for cls in (nn.Linear, nn.Embedding)]
    saved_init = Qwen.init_weights
    try:
        for cls, _ in saved:
            cls.reset_parameters = lambda self: None
        Qwen.init_weights = lambda self: None
        yield
    finally:
        for cls, fn in saved:
            cls.reset_parameters = fn
        Qwen.init_weights = saved_init


def build_model(config: QwenConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | None,
                device: str | torch.device = "cpu") -> Qwen:
    """Instantiate without random init (meta device), then assign the loaded tensors after shape checks."""
    if dtype is None:
        dtype = next(iter(state.values())).dtype if state else torch.float32
        if not dtype.is_floating_point:
            dtype = torch.float32
    with torch.device("meta"), _skip_init():
        model = Qwen(config)
    expected = model.state_dict()
    for name, ref in expected.items():
        if config.tie_word_embeddings and name == "lm_head.weight":
            continue
        if name not in state:
            raise CheckpointError(f"checkpoint lacks tensor for {name!r}")
        if tuple(state[name].shape) != tuple(ref.shape):
            raise CheckpointError(
                f"tensor {name!r} has shape {tuple(state[name].shape)}, the config implies {tuple(ref.shape)}"
            )
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()},
                          strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    return model.eval()


# ------------------------------------------------------------------------------ folders
def _safetensor_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {missing}")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"no *.safetensors files in {folder}")
    return files


def read_safetensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                state[key] = fh.get_tensor(key)
    return state


def load_model(path: str | Path, dtype: torch.dtype | str | None = None,
               device: str | torch.device = "cpu") -> Qwen:
    """Load any supported checkpoint (see the module docstring)."""
    path = Path(path).expanduser()
    dtype = resolve_dtype(dtype)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_file() and path.suffix == ".gguf":
        from .gguf_loader import load_gguf  # noqa: PLC0415 (optional heavy path)

        return load_gguf(path, dtype=dtype, device=device)
    if path.is_file():
        raise CheckpointError(f"{path} is a file; give a model folder or a .gguf file")
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} has no config.json")
    hf_config = json.loads(config_file.read_text())
    if "QWenLMHeadModel" in (hf_config.get("architectures") or []) or hf_config.get("model_type") == "qwen":
        from .checkpoint_v1 import load_v1  # noqa: PLC0415

        return load_v1(path, hf_config, dtype=dtype, device=device)
    config = config_from_hf(hf_config)
    hf_state = read_safetensors(_safetensor_files(path))
    return build_model(config, model_state_from_hf(hf_state, config), dtype, device)


def save_model(model: Qwen, path: str | Path, max_shard_bytes: int = 4 << 30) -> None:
    """Write config.json and safetensors (sharded past ``max_shard_bytes``) atomically into ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    # clone: split views share storage, which safetensors refuses to write
    state = {k: v.detach().cpu().clone().contiguous() for k, v in hf_state_from_model(model).items()}
    dtype = model.embed_tokens.weight.dtype
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    for name, shard in zip(names, shards):
        tmp = path / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        _atomic_write_text(path / "model.safetensors.index.json", json.dumps(index, indent=2))
    _atomic_write_text(path / "config.json", json.dumps(config_to_hf(model.config, dtype), indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
