"""``openqwen dpo``: direct preference optimisation, a cheap baseline beside PPO on the same preferences.

The loss of a pair is ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, with ``pi_*`` the
policy's summed log-probs of the chosen/rejected reply tokens (``<|im_end|>`` included, the prompt
not) and ``ref_*`` those of the frozen reference: the starting model. The reference log-probs are
computed once, before training, with the starting model in eval mode, and stored in the rows
(``ref_chosen_logp``, ``ref_rejected_logp``), so no second model stays in memory and the reference
cannot drift. At step 0 the policy is the reference and every pair's loss is ``log 2``.

It is a :class:`DPOTask` of the one :class:`~openqwen.train.loop.Trainer` on the reward model's
data (:mod:`.preferences`, :mod:`.pairs`). Metrics: ``accuracy`` (pairs whose implicit reward
``beta * (pi - ref)`` prefers chosen), ``reward_margin``, ``chosen_reward``, ``rejected_reward``. On the
built-in task the end of the run also reports held-out task accuracy of greedy answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openqwen.train.config import TrainConfig
from openqwen.train.distributed import DistInfo, init_distributed
from openqwen.train.lora import apply_lora
from openqwen.train.loop import Trainer
from openqwen.train.pretrain import build_model, load_tokenizer
from openqwen.train.tasks import Metrics

from . import synthetic
from .pairs import EncodedPair, PairRows, PairTask, encode_pairs, trim
from .preferences import PreferencePair, read_preferences


@dataclass
class DPOSection:
    train_files: list[str] = field(default_factory=list)
    """Preference JSONL files, or ``builtin`` (the synthetic arithmetic task)."""
    val_files: list[str] = field(default_factory=list)
    """Held-out pairs for validation; ``builtin``: pairs on the held-out questions."""
    beta: float = 0.1
    """Strength of the implicit KL constraint: the scale of the log-ratio margin inside the sigmoid."""
    epochs: float | None = None
    """Passes over the training pairs; None: ``train.max_steps`` steps."""
    skip_bad: bool = False
    """Count and skip unusable rows (reported) instead of stopping at the first one."""
    reference_batch_size: int = 16
    """Pairs per forward when computing the frozen reference log-probs."""
    builtin_train_size: int = 2000
    builtin_val_size: int = 400
    builtin_seed: int = 0
    heldout_prompts: int = 200
    """With ``builtin`` data: held-out questions answered greedily after training (task accuracy); 0: none."""


@dataclass
class DPOConfig(TrainConfig):
    dpo: DPOSection = field(default_factory=DPOSection)


def reply_logps(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, prompt_len: torch.Tensor) -> torch.Tensor:
    """Summed log-probs [B] of each row's reply tokens (positions ``prompt_len`` .. last real) given
    what precedes them. Rows are right-padded: padding follows every real token, so the causal
    model's outputs on real tokens do not see it."""
    logits = model(ids)[:, :-1].float()
    targets = ids[:, 1:]
    T = ids.shape[1]
    position = torch.arange(1, T, device=ids.device)[None, :]
    scored = (mask[:, 1:] > 0) & (position >= prompt_len[:, None])
    token_logp = torch.gather(F.log_softmax(logits, -1), -1, targets[..., None]).squeeze(-1)
    return (token_logp * scored).sum(-1)


class DPOTask(PairTask):
    """The DPO loss on :class:`DPORows` batches; one unit per pair."""

    def __init__(self, beta: float = 0.1) -> None:
        if beta <= 0:
            raise ValueError(f"dpo.beta must be > 0, got {beta}")
        self.beta = float(beta)

    def policy_logps(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) reply log-probs [B] under ``model``, one forward for both sides."""
        b = trim(batch)
        ids = torch.cat([b["chosen_ids"], b["rejected_ids"]])
        mask = torch.cat([b["chosen_mask"], b["rejected_mask"]])
        return reply_logps(model, ids, mask, torch.cat([b["prompt_len"], b["prompt_len"]])).chunk(2)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             modules: Mapping[str, nn.Module] | None = None) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected = self.policy_logps(model, batch)
        chosen_reward = self.beta * (chosen - batch["ref_chosen_logp"].float())
        rejected_reward = self.beta * (rejected - batch["ref_rejected_logp"].float())
        margin = chosen_reward - rejected_reward
        loss = -F.logsigmoid(margin).sum()
        d = margin.detach()
        return loss, {"accuracy": (d > 0).float().sum(), "reward_margin": d.sum(),
                      "chosen_reward": chosen_reward.detach().sum(), "rejected_reward": rejected_reward.detach().sum()}


class DPORows(PairRows):
    """:class:`~openqwen.align.pairs.PairRows` with the frozen reference's log-probs of both replies."""

    def __init__(self, pairs: Sequence[EncodedPair], seq_len: int, pad_id: int, reference: nn.Module,
                 batch_size: int = 16) -> None:
        super().__init__(pairs, seq_len, pad_id)
        self.ref_chosen, self.ref_rejected = reference_logps(reference, PairRows(pairs, seq_len, pad_id), batch_size)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = super().__getitem__(i)
        row["ref_chosen_logp"] = np.float32(self.ref_chosen[int(i)])
        row["ref_rejected_logp"] = np.float32(self.ref_rejected[int(i)])
        return row


@torch.no_grad()
def reference_logps(reference: nn.Module, rows: PairRows, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The reference model's reply log-probs of every row (eval mode: no dropout), float64 arrays."""
    was_training = reference.training
    reference.eval()
    device = next(reference.parameters()).device
    task, chosen, rejected = DPOTask(), [], []
    try:
        for k in range(0, len(rows), batch_size):
            items = [rows[i] for i in range(k, min(k + batch_size, len(rows)))]
            batch = {key: torch.as_tensor(np.stack([it[key] for it in items])).to(device) for key in items[0]}
            c, r = task.policy_logps(reference, batch)
            chosen.append(c.double().cpu().numpy())
            rejected.append(r.double().cpu().numpy())
    finally:
        reference.train(was_training)
    return np.concatenate(chosen), np.concatenate(rejected)


def _pairs(files: list[str], cfg: DPOConfig, kind: str) -> list[PreferencePair]:
    d, out = cfg.dpo, []
    for f in files:
        if f == "builtin":
            out += (synthetic.preference_pairs("train", d.builtin_train_size, d.builtin_seed) if kind == "train"
                    else synthetic.preference_pairs("heldout", d.builtin_val_size, d.builtin_seed))
            continue
        pairs, report = read_preferences(f, skip_bad=d.skip_bad)
        if report.skipped:
            print(f"dpo: {f}: {report}")
        out += pairs
    return out


def heldout_task_accuracy(model: nn.Module, tokenizer: Any, n: int, seed: int = 0) -> dict[str, float]:
    """Greedy answers of the model to ``n`` held-out synthetic questions: mean ground-truth score and accuracy."""
    from openqwen.infer.engine import Engine
    from openqwen.infer.sampling import SamplingParams

    questions = synthetic.prompts("heldout", n, seed)
    engine = Engine(model.eval(), tokenizer, max_batch_size=32, background=False)
    try:
        replies = engine.chat(questions, SamplingParams(max_new_tokens=16, greedy=True))
    finally:
        engine.close()
    scores = [synthetic.score_response(m, c.text) for m, c in zip(questions, replies)]
    correct = [synthetic.is_correct(m, c.text) for m, c in zip(questions, replies)]
    return {"heldout_score": float(np.mean(scores)), "heldout_task_accuracy": float(np.mean(correct))}


def run(cfg: DPOConfig, info: DistInfo | None = None) -> dict[str, Any]:
    """DPO as ``cfg`` says; returns the summary (with ``model_dir``)."""
    d = cfg.dpo
    if not cfg.model.init_from:
        raise ValueError("model.init_from is not set: DPO starts from an SFT model folder (it is also the frozen "
                         "reference), e.g. --model.init_from runs/demo/sft")
    if not d.train_files:
        raise ValueError("dpo.train_files is empty: give preference JSONL files, or 'builtin' for the synthetic task")
    info = info or init_distributed(cfg.train.device)
    tokenizer = load_tokenizer(cfg.data.tokenizer or cfg.model.init_from)
    model = build_model(cfg, tokenizer.vocab_size, None)
    seq_len = cfg.model.seq_length or model.config.seq_length
    reference = model.to(info.device)  # the reference is the starting model, read before any update

    def rows(files: list[str], kind: str) -> DPORows:
        encoded, dropped = encode_pairs(_pairs(files, cfg, kind), tokenizer, seq_len)
        if dropped and info.is_main:
            print(f"dpo: dropped {dropped} {kind} pairs longer than {seq_len} tokens")
        return DPORows(encoded, seq_len, tokenizer.eos_id, reference, d.reference_batch_size)

    train = rows(d.train_files, "train")
    val = rows(d.val_files, "val") if d.val_files else None
    if d.epochs:
        per_step = cfg.train.batch_size * cfg.train.grad_accum * info.world_size
        cfg.train.max_steps = max(1, math.ceil(d.epochs * len(train) / per_step))
    if cfg.lora.rank:
        apply_lora(model, cfg.lora)
    trainer = Trainer(cfg, model, train, task=DPOTask(d.beta), val_data=val, info=info, name="dpo")
    summary = trainer.fit()
    trainer.export(cfg.train.out_dir, tokenizer)
    summary.update(model_dir=str(Path(cfg.train.out_dir)), train_pairs=len(train))
    if info.is_main and "builtin" in d.val_files and d.heldout_prompts:
        from openqwen.checkpoint import load_model

        summary.update(heldout_task_accuracy(load_model(cfg.train.out_dir), tokenizer, d.heldout_prompts))
    return summary
