"""``openqwen reward train``: the report's reward model, preference-model pretraining then fine-tuning.

Two stages of the one :class:`~openqwen.train.loop.Trainer`, each a :class:`~openqwen.align.reward.RewardTask`:

1. PMP (when ``reward.pmp_files`` is set): Bradley-Terry on a large, noisy comparison set, for
   ``reward.pmp_steps`` steps (0: ``reward.pmp_epochs`` passes over it);
2. fine-tuning on the small, clean set ``reward.train_files``, for ``train.max_steps`` steps
   (or ``reward.epochs`` passes), starting from the PMP stage's model and head.

Both use ``optim`` as given (the report: constant LR 3e-6 after warm-up, batch 64, sequence 2048,
one epoch). The output folder holds the final reward model as a Hugging Face
``Qwen2ForSequenceClassification`` folder (:func:`~openqwen.align.reward.save_reward_model`) with
the held-out metrics in ``openqwen_reward.json``; each stage's checkpoints, metrics and loss plot
are in ``pmp/`` and ``finetune/``, and a rerun resumes where it stopped.

Data: preference JSONL (:mod:`.preferences`), or ``builtin`` for the synthetic arithmetic task
(:mod:`.synthetic`): noisy pairs for PMP, clean ones for fine-tuning, held-out questions for ``val_files``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openqwen.train.config import TrainConfig
from openqwen.train.distributed import DistInfo, barrier, init_distributed
from openqwen.train.lora import apply_lora
from openqwen.train.loop import Trainer
from openqwen.train.pretrain import build_model, load_tokenizer

from . import synthetic
from .pairs import EncodedPair, PairRows, encode_pairs
from .preferences import PreferencePair, read_preferences
from .reward import SEQ_CLS_ARCHITECTURE, RewardModel, RewardTask, load_reward_model, pair_metrics, save_reward_model, score_pairs

BUILTIN = "builtin"


@dataclass
class RewardSection:
    train_files: list[str] = field(default_factory=list)
    """Clean comparisons to fine-tune on (preference JSONL), or ``builtin`` (the synthetic task)."""
    val_files: list[str] = field(default_factory=list)
    """Held-out comparisons (validation during training, metrics at the end); ``builtin``: held-out questions."""
    pmp_files: list[str] = field(default_factory=list)
    """Large, noisy comparisons for preference-model pretraining; empty: no PMP stage."""
    pmp_steps: int = 0
    """Optimiser steps of the PMP stage; 0: ``pmp_epochs`` passes over the PMP data."""
    pmp_epochs: float = 1.0
    epochs: float | None = None
    """Passes over ``train_files`` in fine-tuning (the report: 1); None: ``train.max_steps`` steps."""
    margin: float = 0.0
    """Constant margin of the Bradley-Terry loss, added to each pair's own ``margin`` field."""
    skip_bad: bool = False
    """Count and skip unusable rows (reported) instead of stopping at the first one."""
    builtin_train_size: int = 500
    """Pairs of the built-in set for fine-tuning (clean labels)."""
    builtin_pmp_size: int = 20000
    builtin_pmp_noise: float = 0.25
    """Fraction of the built-in PMP pairs whose labels are swapped."""
    builtin_val_size: int = 400
    builtin_seed: int = 0
    builtin_near_miss: float = 0.0
    """Fraction of the wrong numbers in the built-in PMP and fine-tuning pairs that are off by 1..2 (a
    model's mistakes) instead of guesses; the held-out pairs keep guesses, so their accuracy stays comparable."""


@dataclass
class RewardConfig(TrainConfig):
    reward: RewardSection = field(default_factory=RewardSection)


def load_pairs(files: list[str], cfg: RewardConfig, kind: str, quiet: bool = False) -> list[PreferencePair]:
    """The pairs of ``files`` (``builtin``: the synthetic set of ``kind``: pmp, train or val)."""
    r = cfg.reward
    out: list[PreferencePair] = []
    for f in files:
        if f == BUILTIN:
            if kind == "pmp":
                out += synthetic.preference_pairs("train", r.builtin_pmp_size, r.builtin_seed + 1, r.builtin_pmp_noise,
                                                  r.builtin_near_miss)
            elif kind == "train":
                out += synthetic.preference_pairs("train", r.builtin_train_size, r.builtin_seed, near_miss=r.builtin_near_miss)
            else:
                out += synthetic.preference_pairs("heldout", r.builtin_val_size, r.builtin_seed)
            continue
        pairs, report = read_preferences(f, skip_bad=r.skip_bad)
        if report.skipped and not quiet:
            print(f"reward: {f}: {report}")
        out += pairs
    return out


def encoded(files: list[str], cfg: RewardConfig, kind: str, tokenizer: Any, seq_len: int,
            quiet: bool = False) -> list[EncodedPair]:
    pairs, dropped = encode_pairs(load_pairs(files, cfg, kind, quiet), tokenizer, seq_len)
    if dropped and not quiet:
        print(f"reward: dropped {dropped} {kind} pairs longer than {seq_len} tokens")
    if not pairs:
        raise ValueError(f"no {kind} pairs fit the sequence length {seq_len}")
    return pairs


def is_reward_model_folder(path: str | Path) -> bool:
    """A folder :func:`~openqwen.align.reward.load_reward_model` reads as a reward model (not a plain LM)."""
    config = Path(path) / "config.json"
    return config.exists() and SEQ_CLS_ARCHITECTURE in (json.loads(config.read_text()).get("architectures") or [])


def initial_reward_model(cfg: RewardConfig, tokenizer: Any) -> RewardModel:
    """The model to start from: a reward model folder as it is (``model.init_from``), else a Qwen
    (``init_from`` or the preset) with a fresh head seeded by ``train.seed``."""
    if cfg.model.init_from and is_reward_model_folder(cfg.model.init_from):
        rm = load_reward_model(cfg.model.init_from)
    else:
        rm = RewardModel.from_backbone(build_model(cfg, tokenizer.vocab_size, None), seed=cfg.train.seed)
    rm.backbone.train()
    return rm


def steps_for(epochs: float, rows: int, cfg: TrainConfig, info: DistInfo) -> int:
    per_step = cfg.train.batch_size * cfg.train.grad_accum * info.world_size
    return max(1, math.ceil(epochs * rows / per_step))


def train_stage(cfg: RewardConfig, rm: RewardModel, rows: PairRows, val: PairRows | None, out_dir: Path,
                max_steps: int, name: str, info: DistInfo) -> tuple[RewardModel, dict[str, Any]]:
    """One reward-model stage on the Trainer; returns the trained model (re-read from its export,
    LoRA merged) and the stage's summary."""
    stage = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(out_dir), max_steps=max_steps))
    if cfg.lora.rank:
        apply_lora(rm.backbone, cfg.lora)
    trainer = Trainer(stage, rm.backbone, rows, task=RewardTask(rm.head, cfg.reward.margin), val_data=val,
                      info=info, name=name)
    summary = trainer.fit()
    trainer.export(out_dir / "model")
    barrier()  # rank 0 writes the export that every rank reads back
    return load_reward_model(out_dir / "model"), summary


def run(cfg: RewardConfig, info: DistInfo | None = None) -> dict[str, Any]:
    """Train the reward model as ``cfg`` says; returns the summary (with ``model_dir`` and the held-out metrics)."""
    r = cfg.reward
    if not r.train_files:
        raise ValueError("reward.train_files is empty: give preference JSONL files, or 'builtin' for the synthetic task")
    if not cfg.model.init_from and not cfg.data.tokenizer:
        raise ValueError("model.init_from is not set: the report starts the reward model from a pretrained (or SFT) "
                         "model folder, e.g. --model.init_from runs/demo/sft")
    info = info or init_distributed(cfg.train.device)
    quiet = not info.is_main
    tokenizer = load_tokenizer(cfg.data.tokenizer or cfg.model.init_from)
    rm = initial_reward_model(cfg, tokenizer)
    seq_len = cfg.model.seq_length or rm.config.seq_length
    pad = tokenizer.eos_id
    val_pairs = encoded(r.val_files, cfg, "val", tokenizer, seq_len, quiet) if r.val_files else []
    val = PairRows(val_pairs, seq_len, pad) if val_pairs else None
    out = Path(cfg.train.out_dir)
    summary: dict[str, Any] = {}
    if r.pmp_files:
        pmp = PairRows(encoded(r.pmp_files, cfg, "pmp", tokenizer, seq_len, quiet), seq_len, pad)
        steps = r.pmp_steps or steps_for(r.pmp_epochs, len(pmp), cfg, info)
        if not quiet:
            print(f"reward: PMP on {len(pmp)} pairs, {steps} steps")
        rm, summary["pmp"] = train_stage(cfg, rm, pmp, val, out / "pmp", steps, "reward-pmp", info)
    train = PairRows(encoded(r.train_files, cfg, "train", tokenizer, seq_len, quiet), seq_len, pad)
    steps = steps_for(r.epochs, len(train), cfg, info) if r.epochs else cfg.train.max_steps
    if not quiet:
        print(f"reward: fine-tuning on {len(train)} pairs, {steps} steps")
    rm, summary["finetune"] = train_stage(cfg, rm, train, val, out / "finetune", steps, "reward-finetune", info)
    metrics = {}
    if val_pairs:
        metrics = pair_metrics(*score_pairs(rm.to(info.device), val_pairs, cfg.train.batch_size, pad))
    if info.is_main:
        save_reward_model(rm.cpu(), out, tokenizer, metrics={f"heldout_{k}": v for k, v in metrics.items()})
    summary.update(model_dir=str(out), train_pairs=len(train), **{f"heldout_{k}": v for k, v in metrics.items()})
    return summary
