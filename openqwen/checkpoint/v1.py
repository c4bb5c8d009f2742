"""First-generation Qwen checkpoints (``QWenLMHeadModel``, the Qwen Technical Report's release).

Layout of those Hugging Face folders (``trust_remote_code`` models):

==========================================  =================================================
first generation                            openqwen
==========================================  =================================================
``transformer.wte.weight``                  ``embed_tokens.weight``
``transformer.h.N.ln_1.weight``             ``layers.N.input_layernorm.weight``
``transformer.h.N.attn.c_attn.{weight,bias}``  ``layers.N.self_attn.qkv_proj`` (Q | K | V thirds, as is)
``transformer.h.N.attn.c_proj.weight``      ``layers.N.self_attn.o_proj.weight``
``transformer.h.N.ln_2.weight``             ``layers.N.post_attention_layernorm.weight``
``transformer.h.N.mlp.w2.weight``           gate half of ``layers.N.mlp.gate_up_proj`` (SiLU is on w2)
``transformer.h.N.mlp.w1.weight``           up half of ``layers.N.mlp.gate_up_proj``
``transformer.h.N.mlp.c_proj.weight``       ``layers.N.mlp.down_proj.weight``
``transformer.ln_f.weight``                 ``norm.weight``
``lm_head.weight``                          ``lm_head.weight`` (untied in every released size)
==========================================  =================================================

config.json comes in two spellings. The September 2023 release (v1.1) uses ``hidden_size``,
``num_attention_heads``, ``num_hidden_layers``, ``intermediate_size``, ``max_position_embeddings``;
the August 2023 release used GPT-2 names: ``n_embd``, ``n_head``, ``n_layer``, ``ffn_hidden_size``,
``n_positions`` and ``padded_vocab_size``. Both store the FFN width as *twice* the SwiGLU branch
width (22016 for the 7B model, whose branches are 11008 wide). Shared names: ``kv_channels`` (head
dim), ``rotary_emb_base``, ``rotary_pct`` (must be 1), ``layer_norm_epsilon``, ``seq_length``
(training length, where dynamic NTK and LogN switch on), ``use_dynamic_ntk``, ``use_logn_attn``,
``no_bias``, ``tie_word_embeddings``.

Weights are read from safetensors (one file or sharded with an index) or from ``pytorch_model*.bin``
pickles (loaded with ``weights_only=True``, so no code in the file runs).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .checkpoint import CheckpointError, build_model, read_safetensors, resolve_dtype
from .config import QwenConfig
from .model import Qwen

# (v1.1 name, August-2023 name) for each field that was renamed between the releases.
_RENAMED = {
    "hidden_size": ("hidden_size", "n_embd"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer"),
    "ffn_width_x2": ("intermediate_size", "ffn_hidden_size"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
}


def _field(hf: dict[str, Any], what: str, default: Any = None) -> Any:
    names = _RENAMED[what]
    for name in names:
        if hf.get(name) is not None:
            return hf[name]
    if default is None:
        raise CheckpointError(f"first-generation config.json lacks {' / '.join(repr(n) for n in names)}")
    return default


def config_from_v1(hf: dict[str, Any], vocab_rows: int | None = None) -> QwenConfig:
    """QwenConfig from a first-generation ``config.json`` (either spelling).

    ``vocab_rows``: rows of the stored embedding, which win over the config's vocabulary fields
    (the August release kept the tokenizer size in ``vocab_size`` and the rows in ``padded_vocab_size``).
    """
    hidden = int(_field(hf, "hidden_size"))
    heads = int(_field(hf, "num_attention_heads"))
    width_x2 = int(_field(hf, "ffn_width_x2"))
    if width_x2 % 2:
        raise CheckpointError(
            f"first-generation FFN size {width_x2} is odd; the release stores twice the SwiGLU branch width"
        )
    if float(hf.get("rotary_pct", 1.0)) != 1.0:
        raise CheckpointError(f"rotary_pct {hf['rotary_pct']} is not supported (the released models use 1.0)")
    vocab = vocab_rows or hf.get("padded_vocab_size") or hf.get("vocab_size")
    if vocab is None:
        raise CheckpointError("first-generation config.json lacks 'vocab_size'")
    max_pos = int(_field(hf, "max_position_embeddings", 8192))
    return QwenConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=width_x2 // 2,
        num_hidden_layers=int(_field(hf, "num_hidden_layers")),
        num_attention_heads=heads,
        num_key_value_heads=heads,  # the first generation is plain multi-head attention
        head_dim=int(hf.get("kv_channels") or hidden // heads),
        rope_theta=float(hf.get("rotary_emb_base", 10000.0)),
        rms_norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
        qkv_bias=True,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_position_embeddings=max_pos,
        seq_length=int(hf.get("seq_length", 2048)),
        initializer_range=float(hf.get("initializer_range", 0.02)),
        use_dynamic_ntk=bool(hf.get("use_dynamic_ntk", False)),
        use_logn_attn=bool(hf.get("use_logn_attn", False)),
    )


def config_to_v1(c: QwenConfig, torch_dtype: torch.dtype) -> dict[str, Any]:
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
        "torch_dtype": str(torch_dtype).removeprefix("torch."),
    }


# --------------------------------------------------------------------------------------- tensors
def read_v1_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a first-generation folder: safetensors (preferred) or ``pytorch_model*.bin``."""
    index = folder / "model.safetensors.index.json"
    st = sorted(folder.glob("*.safetensors"))
    if index.exists() or st:
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise CheckpointError(f"{index} names shards that are missing: {missing}")
            st = [folder / s for s in shards]
        return read_safetensors(st)
    bin_index = folder / "pytorch_model.bin.index.json"
    if bin_index.exists():
        shards = sorted(set(json.loads(bin_index.read_text())["weight_map"].values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise CheckpointError(f"{bin_index} names shards that are missing: {missing}")
        bins = [folder / s for s in shards]
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


def model_state_from_v1(v1: dict[str, torch.Tensor], c: QwenConfig) -> dict[str, torch.Tensor]:
    """First-generation tensor names -> this model's state dict. Raises on a missing or extra tensor."""
    v1 = dict(v1)

    def take(name: str) -> torch.Tensor:
        try:
            return v1.pop(name)
        except KeyError:
            raise CheckpointError(f"first-generation checkpoint lacks tensor {name!r}") from None

    out = {"embed_tokens.weight": take("transformer.wte.weight"), "norm.weight": take("transformer.ln_f.weight")}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = take("lm_head.weight")
    else:
        v1.pop("lm_head.weight", None)
    for i in range(c.num_hidden_layers):
        p, q = f"transformer.h.{i}.", f"layers.{i}."
        out[q + "self_attn.qkv_proj.weight"] = take(p + "attn.c_attn.weight")
        out[q + "self_attn.qkv_proj.bias"] = take(p + "attn.c_attn.bias")
        out[q + "self_attn.o_proj.weight"] = take(p + "attn.c_proj.weight")
        # the release computes c_proj(w1(x) * silu(w2(x))): w2 is the gate, w1 the up projection
        gate, up = take(p + "mlp.w2.weight"), take(p + "mlp.w1.weight")
        if gate.shape != up.shape:
            raise CheckpointError(f"{p}mlp.w1.weight {tuple(up.shape)} and mlp.w2.weight {tuple(gate.shape)} differ")
        out[q + "mlp.gate_up_proj.weight"] = torch.cat([gate, up])
        out[q + "mlp.down_proj.weight"] = take(p + "mlp.c_proj.weight")
        out[q + "input_layernorm.weight"] = take(p + "ln_1.weight")
        out[q + "post_attention_layernorm.weight"] = take(p + "ln_2.weight")
    leftovers = sorted(k for k in v1 if not k.endswith("inv_freq"))
    if leftovers:
        biases = [k for k in leftovers if k.endswith(".bias")]
        hint = (" (biases outside c_attn: a config with no_bias=false, which the released models never use)"
                if biases else "")
        raise CheckpointError(f"first-generation checkpoint has tensors the model does not use{hint}: {leftovers[:5]}")
    return out


def v1_state_from_model(model: Qwen) -> dict[str, torch.Tensor]:
    """The model's weights under first-generation names."""
    c = model.config
    out = {"transformer.wte.weight": model.embed_tokens.weight, "transformer.ln_f.weight": model.norm.weight}
    if not c.tie_word_embeddings:
        out["lm_head.weight"] = model.lm_head.weight
    for i, layer in enumerate(model.layers):
        p = f"transformer.h.{i}."
        out[p + "attn.c_attn.weight"] = layer.self_attn.qkv_proj.weight
        out[p + "attn.c_attn.bias"] = layer.self_attn.qkv_proj.bias
        out[p + "attn.c_proj.weight"] = layer.self_attn.o_proj.weight
        gate, up = layer.mlp.gate_up_proj.weight.chunk(2)
        out[p + "mlp.w2.weight"] = gate
        out[p + "mlp.w1.weight"] = up
        out[p + "mlp.c_proj.weight"] = layer.mlp.down_proj.weight
        out[p + "ln_1.weight"] = layer.input_layernorm.weight
        out[p + "ln_2.weight"] = layer.post_attention_layernorm.weight
    return out


# ------------------------------------------------------------------------------------ load/save
def load_v1(path: str | Path, hf_config: dict[str, Any] | None = None, dtype: torch.dtype | str | None = None,
            device: str | torch.device = "cpu") -> Qwen:
    """Load a first-generation (``QWenLMHeadModel``) folder. ``dtype`` None keeps the stored dtype."""
    path = Path(path)
    if hf_config is None:
        config_file = path / "config.json"
        if not config_file.exists():
            raise CheckpointError(f"{path} has no config.json")
        hf_config = json.loads(config_file.read_text())
    state = read_v1_tensors(path)
    if "transformer.wte.weight" not in state:
        raise CheckpointError(f"{path}: first-generation checkpoint lacks tensor 'transformer.wte.weight'")
    config = config_from_v1(hf_config, vocab_rows=state["transformer.wte.weight"].shape[0])
    return build_model(config, model_state_from_v1(state, config), resolve_dtype(dtype), device)


def save_v1(model: Qwen, path: str | Path) -> None:
    """Export in the first-generation layout (v1.1 config names, one safetensors file).

    Useful for tools that only know ``QWenLMHeadModel``; the model must be plain multi-head
    attention with a QKV bias, as that layout has no other form.
    """
    path = Path(path)
    dtype = model.embed_tokens.weight.dtype
    config = config_to_v1(model.config, dtype)  # validates before anything is written
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in v1_state_from_model(model).items()}
    tmp = path / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path / "model.safetensors")
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path / "config.json")
