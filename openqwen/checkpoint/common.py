"""What every checkpoint format shares: the dtype vocabulary, the declarative name map, reading and
writing safetensors, and building a model from loaded tensors.

A format describes its tensor names once, as a :class:`NameMap` of :class:`Rename` rules; the same
rules turn a file's tensors into the model's state dict (:meth:`NameMap.to_ours`) and the model's
state dict into the file's tensors (:meth:`NameMap.to_theirs`). The model fuses Q|K|V and gate|up
into single projections; a rule says how such a fused tensor divides into the file's parts.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import LONG_CONTEXT_FIELDS, QwenConfig
from ..model import Qwen
from .errors import CheckpointError

__all__ = ["DTYPES", "CheckpointError", "resolve_dtype", "dtype_name", "Rename", "NameMap", "expected_shapes",
           "build_model", "safetensor_files", "read_safetensors", "write_safetensors", "atomic_write_text",
           "long_context_settings", "long_context_extra"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
"""The one dtype vocabulary of loading (``"auto"`` and None: the checkpoint's own)."""


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a name of :data:`DTYPES`; None for None / ``"auto"`` (the checkpoint decides)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    try:
        return DTYPES[dtype.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------- name maps
@dataclass(frozen=True)
class Rename:
    """One of the model's parameters and the file tensor(s) it comes from. ``{i}`` is the layer index.

    split -- how the model's tensor divides into the file's, along dim 0:
        ``"same"``: one file tensor, as it is; ``"qkv"``: query | key | value rows (grouped-query
        widths from the config); ``"halves"``: two equal halves (gate | up).
    when -- ``"always"``; ``"qkv_bias"``: only when the config has a QKV bias; ``"untied"``: only for
        an untied output head (a tied checkpoint that stores the copy anyway has it dropped, as
        transformers does when it ties the head over it).
    """

    ours: str
    theirs: tuple[str, ...]
    split: str = "same"
    when: str = "always"

    def __post_init__(self) -> None:
        parts = {"same": 1, "qkv": 3, "halves": 2}
        if parts.get(self.split) != len(self.theirs) or self.when not in ("always", "qkv_bias", "untied"):
            raise ValueError(f"malformed rename rule {self}")


Part = tuple[str, tuple[int, ...]]


class NameMap:
    """A format's tensor names, declared once and used both ways.

    ``ignored``: regular expressions of file tensors that carry no weights (cached rotary tables).
    """

    def __init__(self, rules: Iterable[Rename], ignored: Iterable[str] = ()) -> None:
        self.rules = list(rules)
        self.ignored = [re.compile(p) for p in ignored]

    def plan(self, config: QwenConfig) -> dict[str, list[Part]]:
        """Each parameter of a model of ``config`` -> its file tensors and their shapes, in order."""
        shapes = expected_shapes(config)
        q_rows = config.num_attention_heads * config.head_dim
        kv_rows = config.num_key_value_heads * config.head_dim
        out: dict[str, list[Part]] = {}
        for rule in self.rules:
            if not _applies(rule.when, config):
                continue
            for i in range(config.num_hidden_layers) if "{i}" in rule.ours else [None]:
                ours = rule.ours.format(i=i)
                shape = shapes[ours]
                rows = {"same": [shape[0]], "qkv": [q_rows, kv_rows, kv_rows],
                        "halves": [shape[0] // 2] * 2}[rule.split]
                out[ours] = [(name.format(i=i), (r, *shape[1:])) for name, r in zip(rule.theirs, rows)]
        missing = sorted(set(shapes) - set(out) - ({"lm_head.weight"} if config.tie_word_embeddings else set()))
        if missing:  # a rule list that forgets a parameter is a bug here, not in the file
            raise AssertionError(f"name map covers no rule for {missing[:3]}")
        return out

    def dropped(self, config: QwenConfig) -> set[str]:
        """File tensors accepted and dropped for this config (a tied model's stored head)."""
        if not config.tie_word_embeddings:
            return set()
        return {n for r in self.rules if r.when == "untied" for n in r.theirs}

    def is_ignored(self, name: str) -> bool:
        return any(p.search(name) for p in self.ignored)

    def check(self, shapes: Mapping[str, tuple[int, ...]], config: QwenConfig, source: str,
              implied_by: str = "the config") -> dict[str, list[Part]]:
        """Check a file's tensor table (name -> shape) against ``config``: every part present with the
        implied shape, every file tensor used. Returns :meth:`plan`; CheckpointError names a misfit."""
        plan = self.plan(config)
        for ours, parts in plan.items():
            for name, shape in parts:
                if name not in shapes:
                    raise CheckpointError(f"{source} lacks tensor {name!r} (for {ours})")
                if tuple(shapes[name]) != shape:
                    raise CheckpointError(f"{source}: tensor {name!r} (for {ours}) has shape {tuple(shapes[name])}, "
                                          f"{implied_by} implies {shape}")
        wanted = {name for parts in plan.values() for name, _ in parts} | self.dropped(config)
        unused = sorted(k for k in shapes if k not in wanted and not self.is_ignored(k))
        if unused:
            raise CheckpointError(f"{source} has tensors the model does not use: {unused[:5]}")
        return plan

    def to_ours(self, theirs: Mapping[str, torch.Tensor], config: QwenConfig, source: str) -> dict[str, torch.Tensor]:
        """A file's tensors -> the model's state dict (fused parts concatenated), after :meth:`check`."""
        plan = self.check({k: tuple(v.shape) for k, v in theirs.items()}, config, source)
        return {ours: theirs[parts[0][0]] if len(parts) == 1 else torch.cat([theirs[n] for n, _ in parts])
                for ours, parts in plan.items()}

    def to_theirs(self, state: Mapping[str, torch.Tensor], config: QwenConfig) -> dict[str, torch.Tensor]:
        """The model's state dict -> the file's tensors (views; split along dim 0 where fused)."""
        out: dict[str, torch.Tensor] = {}
        for ours, parts in self.plan(config).items():
            pieces = state[ours].split([shape[0] for _, shape in parts])
            out.update({name: piece for (name, _), piece in zip(parts, pieces)})
        return out


def _applies(when: str, config: QwenConfig) -> bool:
    return when == "always" or (when == "qkv_bias" and config.qkv_bias) or (
        when == "untied" and not config.tie_word_embeddings)


def expected_shapes(config: QwenConfig) -> dict[str, tuple[int, ...]]:
    """The model's parameter shapes for ``config`` (from a skeleton on the meta device: no memory)."""
    with torch.device("meta"):
        skeleton = Qwen(config)
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}


# ------------------------------------------------------------------------------------- building
def build_model(config: QwenConfig, state: dict[str, torch.Tensor], dtype: torch.dtype | None,
                device: str | torch.device = "cpu") -> Qwen:
    """A model of ``config`` holding ``state`` (the model's own names), in eval mode.

    The model is built on the meta device (no memory, no random init) and the tensors are assigned
    after a shape check. ``dtype`` None keeps the tensors' own floating dtype.
    """
    if dtype is None:
        dtype = next(iter(state.values())).dtype if state else torch.float32
        if not dtype.is_floating_point:
            dtype = torch.float32
    with torch.device("meta"):
        model = Qwen(config)
    for name, ref in model.state_dict().items():
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


def long_context_settings(settings: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The long-context fields of :class:`QwenConfig` that ``settings`` (an ``"openqwen"`` section of
    config.json) sets, checked by building a config with them (ValueError says what to fix)."""
    found = {k: settings[k] for k in LONG_CONTEXT_FIELDS if k in settings}
    if found:
        try:
            QwenConfig(num_hidden_layers=len(found.get("window_sizes") or []) or 1, **found)
        except ValueError as e:
            raise CheckpointError(f"{source}: {e}") from None
    return found


def long_context_extra(c: QwenConfig) -> dict[str, Any]:
    """The long-context fields of ``c`` that differ from the defaults (saved under ``"openqwen"``)."""
    default = QwenConfig()
    return {k: getattr(c, k) for k in LONG_CONTEXT_FIELDS if getattr(c, k) != getattr(default, k)}


# ---------------------------------------------------------------------------------- safetensors
def indexed_shards(index: Path) -> list[Path]:
    """The shard files a ``*.index.json`` (safetensors or ``.bin``) names, each checked to exist."""
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index} is not a shard index (a JSON object with a 'weight_map'): {e}") from e
    missing = [s for s in shards if not (index.parent / s).exists()]
    if missing:
        raise CheckpointError(f"{index} names shards that are missing: {missing}")
    return [index.parent / s for s in shards]


def safetensor_files(folder: Path, required: bool = True) -> list[Path]:
    """The safetensors files of a folder: the shards its index names, or every ``*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        return indexed_shards(index)
    files = sorted(folder.glob("*.safetensors"))
    if not files and required:
        raise CheckpointError(f"no *.safetensors files in {folder}")
    return files


def read_safetensors(files: Iterable[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    state[key] = fh.get_tensor(key)
        except Exception as e:  # noqa: BLE001 (safetensors raises its own error types for bad files)
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"cannot read {f} as safetensors: {e}") from e
    return state


def write_safetensors(state: Mapping[str, torch.Tensor], folder: Path, max_shard_bytes: int) -> None:
    """``model.safetensors``, or shards of at most ``max_shard_bytes`` plus their index, atomically."""
    # clone: split views share storage, which safetensors refuses to write
    state = {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}
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
        tmp = folder / (name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, folder / name)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": {k: n for n, s in zip(names, shards) for k in s}}
        atomic_write_text(folder / "model.safetensors.index.json", json.dumps(index, indent=2))


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
