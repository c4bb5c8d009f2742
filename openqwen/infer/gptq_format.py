"""The GPTQ checkpoint layout: a quantised model written as a folder other tools read, and read back.

The layout is the one AutoGPTQ introduced and transformers loads through its GPTQ integration
(``quantization_config.quant_method = "gptq"``, ``checkpoint_format = "gptq"``): the Qwen2 folder of
:mod:`openqwen.checkpoint.hf`, in which every quantised linear ``NAME`` (``q_proj``, ``k_proj``,
``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj`` of each layer) stores, instead of
``NAME.weight``:

* ``NAME.qweight`` int32 [in * bits / 32, out]: the codes, transposed, ``32 / bits`` consecutive inputs
  per int32 (input ``r * k + j`` of row ``r`` in bits ``bits * j``);
* ``NAME.qzeros`` int32 [groups, out * bits / 32]: zero points, packed the same way along the outputs,
  stored minus one (the offset of this first "gptq" format; "gptq_v2" dropped it);
* ``NAME.scales`` fp16 [groups, out];  ``NAME.g_idx`` int32 [in]: each input's group (``i // group_size``:
  no activation reordering);
* ``NAME.bias`` as in the float layout.

The weight is ``w[o, i] = scales[g, o] * (code[i, o] - (qzeros[g, o] + 1))``, g = g_idx[i]. The
embedding, norms and an untied head stay in float. ``config.json`` is the Qwen2 config plus
``quantization_config``; openqwen's own details (method, calibration) ride along in it under
``"openqwen"``.

:func:`pack_model` turns a calibrated model (:func:`openqwen.infer.gptq.calibrate`) into one of
:class:`~openqwen.infer.quant.Int4Linear` / :class:`~openqwen.infer.quant.Int8Linear` modules;
:func:`save_gptq` writes it; :func:`load_gptq` reads a folder back into the same modules.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint.common import CheckpointError, atomic_write_text, build_model, read_safetensors, safetensor_files, write_safetensors
from ..checkpoint.hf import QWEN2_NAMES, config_from_hf, config_to_hf
from ..model import Qwen
from .gptq import QuantFormat, QuantizedWeight
from .quant import Int4Linear, Int8Linear

FUSED_PARTS = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
               "self_attn.o_proj": ("self_attn.o_proj",),
               "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
               "mlp.down_proj": ("mlp.down_proj",)}
"""Each quantised linear of a block -> the Qwen2 linears it is stored as (split by output rows)."""


def part_rows(config, ours: str) -> list[int]:
    """Output rows of each Qwen2 part of the block linear ``ours`` (a key of :data:`FUSED_PARTS`)."""
    if ours == "self_attn.qkv_proj":
        kv = config.num_key_value_heads * config.head_dim
        return [config.num_attention_heads * config.head_dim, kv, kv]
    if ours == "mlp.gate_up_proj":
        return [config.intermediate_size] * 2
    return [config.hidden_size]


# ------------------------------------------------------------------------------ int32 packing
def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Pack whole numbers 0..2**bits-1 along ``dim`` (0 or 1), 32 / bits per int32, lowest bits first."""
    per = 32 // bits
    v = values.to(torch.int64)
    if v.shape[dim] % per:
        raise ValueError(f"{v.shape[dim]} values along dim {dim} do not pack into int32 words of {per}")
    v = v.unflatten(dim, (v.shape[dim] // per, per))
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view([per if d == dim + 1 else 1 for d in range(v.dim())])
    words = (v << shifts).sum(dim + 1)
    return torch.from_numpy(words.numpy().astype(np.uint32).view(np.int32))


def unpack_int32(words: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of :func:`pack_int32`: int64 values, ``32 / bits`` times as many along ``dim``."""
    per = 32 // bits
    w = torch.from_numpy(words.numpy().view(np.uint32).astype(np.int64)).unsqueeze(dim + 1)
    shifts = (torch.arange(per, dtype=torch.int64) * bits).view([per if d == dim + 1 else 1 for d in range(w.dim())])
    return ((w >> shifts) & ((1 << bits) - 1)).flatten(dim, dim + 1)


def to_gptq_tensors(qw: QuantizedWeight) -> dict[str, torch.Tensor]:
    """One linear's ``qweight`` / ``qzeros`` / ``scales`` / ``g_idx``."""
    out, cols = qw.q.shape
    if out % (32 // qw.bits):
        raise ValueError(f"a layer with {out} outputs does not pack into the GPTQ layout's int32 zero points")
    if float(qw.zeros.min()) < 1:
        raise ValueError("the GPTQ layout stores zero points minus one: a zero point of 0 cannot be written")
    return {"qweight": pack_int32(qw.q.t(), qw.bits, 0),
            "qzeros": pack_int32(qw.zeros.t() - 1, qw.bits, 1),
            "scales": qw.scales.t().to(torch.float16).contiguous(),
            "g_idx": (torch.arange(cols, dtype=torch.int32) // qw.group_size)}


def from_gptq_tensors(t: dict[str, torch.Tensor], bits: int, where: str) -> QuantizedWeight:
    """The inverse of :func:`to_gptq_tensors` (checks g_idx is the plain i // group_size)."""
    q = unpack_int32(t["qweight"], bits, 0).t()
    zeros = (unpack_int32(t["qzeros"], bits, 1) + 1).t().float()
    scales = t["scales"].float().t()
    cols, groups = q.shape[1], scales.shape[1]
    if zeros.shape != scales.shape or cols % groups:
        raise CheckpointError(f"{where}: qweight {tuple(t['qweight'].shape)}, qzeros {tuple(t['qzeros'].shape)} and "
                              f"scales {tuple(t['scales'].shape)} do not describe one layer")
    g = cols // groups
    g_idx = t.get("g_idx")
    if g_idx is not None and not torch.equal(g_idx.long(), torch.arange(cols) // g):
        raise CheckpointError(f"{where}: g_idx reorders inputs (desc_act / act-order); openqwen reads plain groups")
    return QuantizedWeight(q.to(torch.uint8).contiguous(), scales.contiguous(), zeros.contiguous(), g, bits)


# ------------------------------------------------------------------------------ modules
def quantized_module(qw: QuantizedWeight, bias: torch.Tensor | None) -> nn.Module:
    """The fast module for one quantised layer: Int4Linear, or Int8Linear for 8 bits per row."""
    if qw.bits == 4:
        return Int4Linear.from_quantized(qw.q, qw.scales, qw.zeros, qw.group_size, bias)
    if qw.group_size != qw.q.shape[1] or not torch.all(qw.zeros == 128):
        raise ValueError("int8 layers must be symmetric with one group per row (the Int8Linear grid)")
    layer = Int8Linear(qw.dequantize(), bias)
    layer.weight.copy_((qw.q.to(torch.int16) - 128).to(torch.int8))  # the exact codes, not re-rounded
    layer.scale.copy_(qw.scales[:, 0])
    return layer


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def pack_model(model: Qwen, results: dict[str, QuantizedWeight], head_int8: bool = True) -> Qwen:
    """Swap each calibrated linear of ``results`` for its int4/int8 module, in place; ``head_int8``: the
    output head becomes a round-to-nearest Int8Linear (as :func:`openqwen.infer.quant.quantize_int4`
    does; a tied embedding stays float for lookups), else it stays float."""
    for name, qw in results.items():
        layer = model.get_submodule(name)
        bias = getattr(layer, "bias", None)
        _set(model, name, quantized_module(qw, None if bias is None else bias.detach().float()))
    if head_int8 and isinstance(model.lm_head, nn.Linear):
        model.lm_head = Int8Linear(model.lm_head.weight, None)
    return model


def module_weights(module: nn.Module, where: str) -> QuantizedWeight:
    """The exact codes, scales and zero points a packed layer holds (what :func:`save_gptq` writes)."""
    if isinstance(module, Int4Linear):
        if module.zero is None:
            raise ValueError(f"{where} holds int4 blocks without integer zero points (a GGUF Q4_K layer); "
                             "the GPTQ layout cannot store them: quantise from a float checkpoint")
        return QuantizedWeight(module.codes(), module.scale, module.zero, module.group_size, 4)
    if isinstance(module, Int8Linear):
        rows, cols = module.weight.shape
        return QuantizedWeight((module.weight.to(torch.int16) + 128).to(torch.uint8), module.scale[:, None].clone(),
                               torch.full((rows, 1), 128.0), cols, 8)
    raise ValueError(f"{where} is not quantised ({type(module).__name__}); run calibrate() and pack_model() first")


# ------------------------------------------------------------------------------ folders
def quantization_config(fmt: QuantFormat, method: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``quantization_config`` of config.json (transformers' GPTQ fields)."""
    return {"quant_method": "gptq", "bits": fmt.bits, "group_size": -1 if fmt.bits == 8 else fmt.group_size,
            "desc_act": False, "sym": fmt.symmetric, "true_sequential": False, "static_groups": False,
            "checkpoint_format": "gptq", "damp_percent": float((extra or {}).get("damp", 0.01)),
            "openqwen": {"method": method, **(extra or {})}}


def save_gptq(model: Qwen, folder: str | Path, fmt: QuantFormat, method: str,
              extra: dict[str, Any] | None = None) -> Path:
    """Write a model quantised by :func:`pack_model` (every block linear int4/int8) as a GPTQ folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    c = model.config
    tensors: dict[str, torch.Tensor] = {}
    float_state = {k: v for k, v in model.state_dict().items() if not isinstance(v, torch.Tensor) or v.is_floating_point()}
    dtype = model.embed_tokens.weight.dtype
    for i in range(c.num_hidden_layers):
        for ours, parts in FUSED_PARTS.items():
            name = f"layers.{i}.{ours}"
            layer = model.get_submodule(name)
            qw = module_weights(layer, name)
            start = 0
            bias = getattr(layer, "bias", None)
            for part, rows in zip(parts, part_rows(c, ours)):
                prefix = f"model.layers.{i}.{part}."
                for key, value in to_gptq_tensors(qw.rows(start, start + rows)).items():
                    tensors[prefix + key] = value
                if bias is not None:
                    tensors[prefix + "bias"] = bias[start : start + rows].to(dtype)
                start += rows
    tensors["model.embed_tokens.weight"] = float_state["embed_tokens.weight"]
    tensors["model.norm.weight"] = float_state["norm.weight"].to(dtype)
    for i in range(c.num_hidden_layers):
        for norm in ("input_layernorm", "post_attention_layernorm"):
            tensors[f"model.layers.{i}.{norm}.weight"] = float_state[f"layers.{i}.{norm}.weight"].to(dtype)
    if not c.tie_word_embeddings:
        head = model.lm_head
        tensors["lm_head.weight"] = (head._dense() if isinstance(head, Int8Linear) else head.weight).to(dtype)
    write_safetensors(tensors, folder, 4 << 30)
    config = config_to_hf(c, dtype)
    config["quantization_config"] = quantization_config(fmt, method, extra)
    atomic_write_text(folder / "config.json", json.dumps(config, indent=2) + "\n")
    return folder


def is_gptq_folder(path: str | Path) -> bool:
    """True for a folder whose config.json declares GPTQ weights."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        q = json.loads(config.read_text()).get("quantization_config") or {}
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(q, dict) and q.get("quant_method") == "gptq"


def load_gptq(folder: str | Path, head_int8: bool = True) -> Qwen:
    """A GPTQ folder (:func:`save_gptq`'s, or another tool's with plain groups) as a model of
    Int4Linear / Int8Linear layers; ``head_int8`` as in :func:`pack_model`."""
    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    q = hf.pop("quantization_config")
    bits = int(q.get("bits", 4))
    if bits not in (4, 8):
        raise CheckpointError(f"{folder}: GPTQ with {bits} bits; openqwen reads 4 and 8")
    if q.get("desc_act"):
        raise CheckpointError(f"{folder}: desc_act (activation reordering) GPTQ is not supported; use desc_act=false")
    if q.get("checkpoint_format", "gptq") != "gptq":
        raise CheckpointError(f"{folder}: checkpoint_format {q.get('checkpoint_format')!r}; openqwen reads 'gptq'")
    config = config_from_hf(hf, str(folder / "config.json"))
    files = read_safetensors(safetensor_files(folder))
    dense: dict[str, torch.Tensor] = {}
    results: dict[str, QuantizedWeight] = {}
    for i in range(config.num_hidden_layers):
        for ours, parts in FUSED_PARTS.items():
            pieces = []
            for part in parts:
                prefix = f"model.layers.{i}.{part}."
                try:
                    t = {k: files.pop(prefix + k) for k in ("qweight", "qzeros", "scales")}
                except KeyError as e:
                    raise CheckpointError(f"{folder} lacks GPTQ tensor {e.args[0]!r}") from None
                if prefix + "g_idx" in files:
                    t["g_idx"] = files.pop(prefix + "g_idx")
                pieces.append(from_gptq_tensors(t, bits, prefix[:-1]))
                dense[prefix + "weight"] = pieces[-1].dequantize()
            if len({p.group_size for p in pieces}) != 1:
                raise CheckpointError(f"{folder}: the parts of layer {i}'s {ours} have different group sizes")
            results[f"layers.{i}.{ours}"] = QuantizedWeight(
                torch.cat([p.q for p in pieces]), torch.cat([p.scales for p in pieces]),
                torch.cat([p.zeros for p in pieces]), pieces[0].group_size, bits)
    files.update(dense)
    dtype = files["model.embed_tokens.weight"].dtype
    state = QWEN2_NAMES.to_ours(files, config, str(folder))
    model = build_model(config, state, torch.float32 if dtype != torch.float32 else None)
    return pack_model(model, results, head_int8=head_int8).eval()
