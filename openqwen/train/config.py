"""Training configuration: dataclasses, YAML recipes and ``--section.key value`` overrides.

A run is described by one :class:`TrainConfig` made of sections (``model``, ``data``, ``optim``,
``train``, ``sft``, ``lora``). A recipe YAML holds the same nesting::

    model: {preset: nano-1m}
    optim: {lr: 3.0e-3, warmup_steps: 50}
    train: {max_steps: 500, batch_size: 8}

and any field can be overridden on the command line as ``--optim.lr 1e-3``. Values are parsed as
YAML scalars and then checked against the field's type, so a typo fails loudly instead of being
ignored.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelSection:
    preset: str = "nano-1m"
    """Named shape from :data:`openqwen.config.PRESETS` (ignored when ``init_from`` is set)."""
    init_from: str | None = None
    """A model folder to start from (SFT starts from the pretrained folder)."""
    vocab_size: int | None = None
    """Embedding rows; None takes the tokenizer's / the data's vocabulary size (rounded up to 64)."""
    seq_length: int | None = None
    """Training context; None takes the packed data's sequence length."""
    dropout: float | None = None
    """Dropout on attention and residual branches; None keeps the model config's value."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Further QwenConfig fields, e.g. ``{num_hidden_layers: 2}``."""


@dataclass
class DataSection:
    path: str | None = None
    """Packed shards (``openqwen data pack`` output, an ``index.json`` folder) for pretraining."""
    val_path: str | None = None
    """Packed validation shards; None holds out ``val_sequences`` sequences of ``path`` instead."""
    val_sequences: int = 0
    """Sequences held out from the end of ``path`` for validation when ``val_path`` is unset."""
    tokenizer: str | None = None
    """Tokenizer to save next to the model (a tokenizer file/folder); needed for SFT."""
    seed: int = 1234
    """Seed of the data order (epoch permutations are recomputed from it, never stored)."""
    fim_rate: float = 0.0
    """Pretraining: share of document pieces rearranged fill-in-the-middle (prefix-suffix-middle,
    :mod:`openqwen.train.fim`); 0 = off. Needs the tokenizer (``data.tokenizer`` or ``model.init_from``)."""
    fim_tokens: list[str] = field(default_factory=lambda: ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"])
    """The prefix, suffix and middle sentinels (Qwen2.5-Coder's by default)."""


@dataclass
class OptimSection:
    lr: float = 3e-4
    """Peak learning rate (the report: 3e-4 for pretraining)."""
    min_lr_ratio: float = 0.1
    """Cosine decays to this fraction of the peak (the report: 10 %)."""
    schedule: str = "cosine"
    """``cosine`` (warm-up then cosine) or ``constant`` (warm-up then flat, Code-Qwen / reward model)."""
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    """Applied to matrices only (embeddings and projections); never to norms or biases."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables clipping."""


@dataclass
class TrainSection:
    out_dir: str = "runs/train"
    max_steps: int = 1000
    """Length of the run (the schedule decays over it)."""
    stop_after: int | None = None
    """Stop (with a checkpoint) after this step although the schedule runs to max_steps; a later call
    resumes. For jobs cut into time slices."""
    batch_size: int = 8
    """Sequences per micro-batch on each rank."""
    grad_accum: int = 1
    """Micro-batches per optimiser step (global batch = batch_size * grad_accum * world size)."""
    precision: str = "auto"
    """``auto``, ``fp32`` or ``bf16`` (autocast; weights and optimiser stay fp32). bf16 pays on GPUs and
    CPUs with native bf16 (AMX / AVX512-BF16); on other CPUs it is several times slower than fp32.
    ``auto`` checks the hardware at start (:mod:`openqwen.train.precision`) and prints its choice."""
    device: str | None = None
    """``cpu`` or ``cuda``; None picks cuda when a GPU is visible."""
    compile: bool = False
    """Compile with ``torch.compile`` (needs a C/C++ compiler on CPU); ``compile_scope`` says what."""
    compile_scope: str = "blocks"
    """``blocks``: regional compilation, each transformer block compiled in place (one graph reused by
    every layer: compile time of one block, parameter names unchanged, the chunked head loss kept);
    ``model``: the whole model wrapped (longer compile; the loss then goes through full logits).
    Compile time is paid in the first steps; docs/benchmarks/train.md measures it end to end."""
    cpu_matmul: str = "auto"
    """Library of fp32 linear layers on CPU: ``mkl`` (torch's default), ``onednn``, or ``auto``: oneDNN
    on non-Intel CPUs (MKL skips its fastest kernels there) in eager fp32 training without FSDP, else
    MKL. Printed at start; :mod:`openqwen.train.cpu_matmul` and docs/benchmarks/train.md measure it."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass (memory for compute), applied from outside the model."""
    parallel: str = "auto"
    """``auto`` (FSDP2 when more than one process, else none), ``fsdp``, ``ddp`` or ``none``."""
    seed: int = 0
    """Seed of initialisation and dropout."""
    log_every: int = 1
    eval_every: int = 0
    """Validation every N steps (0: only at the end when there is validation data)."""
    eval_batches: int = 8
    save_every: int = 0
    """Checkpoint every N steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are deleted after a successful save."""
    resume: bool = True
    """Continue from the newest checkpoint in ``out_dir`` when there is one."""
    peak_flops: float | None = None
    """Peak FLOP/s for MFU; None measures the matmul peak of this device once at start-up."""
    threads: int | None = None
    """torch CPU threads (None: leave torch's default)."""
    progress: bool = True
    """Show a tqdm progress bar."""
    tensorboard: bool = True
    """Also log to TensorBoard when the ``tensorboard`` package is installed."""
    plot: bool = True
    """Draw ``loss.png`` (and a stage's own page, e.g. PPO's) at the end; matplotlib takes seconds per
    panel on a busy CPU, so short test runs turn it off."""


@dataclass
class SFTSection:
    train_files: list[str] = field(default_factory=list)
    """Chat JSONL files (OpenAI ``messages`` or the release's ``conversations`` format); the special
    names ``builtin`` (the built-in synthetic chat set) and ``builtin-math`` (worked math solutions of
    :mod:`openqwen.data.synthetic_math`, its train split; ``builtin_size`` of them); for validation
    ``builtin-math-test`` (360 of its held-out questions)."""
    val_files: list[str] = field(default_factory=list)
    system_prompt: str = "You are a helpful assistant."
    """Default system prompt for samples that carry none (each sample may set its own)."""
    pack: bool = True
    """Pack several conversations per sequence (attention kept inside each); False pads one per row."""
    mask_prompt: bool = True
    """Loss on the assistant tokens only, system and user turns masked (the report's SFT and
    Math-Qwen); False trains on every token. Validation always scores the assistant tokens only, so
    runs with either setting compare."""
    builtin_size: int = 2000
    """Conversations in the built-in synthetic set."""
    builtin_seed: int = 0
    epochs: float | None = None
    """When set, max_steps is derived from the number of packed rows."""
    stages: list[dict[str, Any]] = field(default_factory=list)
    """Multi-stage SFT (Code-Qwen-Chat): stages run in turn, each from the previous one's model with a
    fresh optimiser, each with its own data and LR, e.g. ``[{name: chat, train_files: [builtin], lr:
    1e-3, max_steps: 100}, {name: code, train_files: [code.jsonl], lr: 5e-4}]``; keys are
    ``section.key`` overrides or the shorthands of :data:`openqwen.train.sft.STAGE_SHORTHANDS`.
    Empty: one stage from the fields above."""


@dataclass
class LoRASection:
    rank: int = 0
    """0 disables LoRA (full fine-tuning)."""
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    """Linear layers (by attribute name) that get adapters."""
    base: str = "float"
    """Precision of the frozen layers under the adapters: ``float`` (LoRA), or ``int8`` / ``int4`` (Q-LoRA:
    the target layers are rounded to nearest, int8 per row or int4 in groups of ``base_group_size``, and
    stay quantised while the adapters train; untargeted layers stay float)."""
    base_group_size: int = 64
    """Inputs per int4 scale when ``base`` is int4 (a multiple of 32 that divides the layers' inputs)."""


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    sft: SFTSection = field(default_factory=SFTSection)
    lora: LoRASection = field(default_factory=LoRASection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.to_dict()), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TrainConfig":
        cfg = cls()
        for section, values in (d or {}).items():
            if section not in _sections(cls):
                raise ValueError(f"unknown config section {section!r}; sections are: {', '.join(_sections(cls))}")
            if not isinstance(values, dict):
                raise ValueError(f"config section {section!r} must be a mapping, got {values!r}")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value)
        return cfg

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None) -> "TrainConfig":
        """A recipe YAML (None: the defaults) with ``overrides`` applied: a dict ``{"optim.lr": 1e-3}``
        or a list ``["--optim.lr", "1e-3", ...]`` (``--key=value`` also works)."""
        data = {}
        if path is not None:
            p = Path(path)
            if not p.exists():
                bundled = Path(__file__).resolve().parent.parent / "recipes" / p.name
                if bundled.exists():
                    p = bundled
                else:
                    raise FileNotFoundError(f"no recipe at {path} (bundled recipes: {', '.join(list_recipes())})")
            data = yaml.safe_load(p.read_text()) or {}
            if not isinstance(data, dict):
                raise ValueError(f"recipe {path} is not a YAML mapping of sections (model, data, optim, ...)")
        cfg = cls.from_dict(data)
        if isinstance(overrides, dict):
            for key, value in overrides.items():
                cfg.set(key, value)
        elif overrides:
            for key, value in parse_override_args(overrides):
                cfg.set(key, yaml.safe_load(value) if isinstance(value, str) else value)
        return cfg

    def set(self, dotted: str, value: Any) -> None:
        """Set ``section.key`` to ``value``, converted to the field's type."""
        section, _, key = dotted.partition(".")
        if section not in _sections(type(self)) or not key:
            raise ValueError(f"config key {dotted!r} must look like SECTION.KEY with SECTION one of "
                             f"{', '.join(_sections(type(self)))}")
        obj = getattr(self, section)
        hints = typing.get_type_hints(type(obj))
        if key not in hints:
            raise ValueError(f"unknown config key {dotted!r}; {section} has: {', '.join(hints)}")
        setattr(obj, key, _coerce(value, hints[key], dotted))


def _sections(cls: type | None = None) -> list[str]:
    """Section names of ``cls`` (a stage may subclass TrainConfig with a section of its own, e.g. ``ppo``)."""
    return [f.name for f in dataclasses.fields(cls or TrainConfig)]


def _plain(x: Any) -> Any:
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check/convert ``value`` for a field annotated ``hint`` (str, int, float, bool, optionals,
    lists, tuples, dicts)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ValueError(f"{name} expects true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{name} expects an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} expects a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} expects a list, got {value!r}")
        if origin is tuple:
            if len(value) != len(args):
                raise ValueError(f"{name} expects {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, name) for v, a in zip(value, args))
        return [_coerce(v, args[0], name) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} expects a mapping, got {value!r}")
        return dict(value)
    return value


def parse_override_args(argv: list[str]) -> list[tuple[str, str]]:
    """``["--optim.lr", "1e-3", "--train.compile=true"]`` -> ``[("optim.lr", "1e-3"), ...]``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or "." not in arg:
            raise ValueError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ValueError(f"override {arg} needs a value")
            key, value = arg[2:], argv[i + 1]
            i += 2
        out.append((key, value))
    return out


def list_recipes() -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "recipes"
    return sorted(p.name for p in folder.glob("*.yaml"))
