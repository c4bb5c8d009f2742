"""PPO as the report ran it, as a task of the one Trainer, on rollouts from the one Engine.

Four roles. The **policy** is the Trainer's model. The **value** model starts as a copy of the reward
model (its backbone and scalar head, read at every position) and is the task's one trained module,
at its own learning rate (``ppo.value_lr``; the report: policy 1e-6, value 5e-6). The **reference**
(a frozen copy of the starting policy) and the **reward** model are frozen and live on the task.

One PPO iteration is made by :class:`PPOBatches`, the Trainer's batch source: it samples
``responses_per_prompt`` (2, as the report) answers to ``prompts_per_rollout`` prompts with top-p 0.9
from the engine over the current policy, scores them (the reward model, or the built-in task's ground
truth), normalises the scores by a running mean and variance (:mod:`.normalize`, checkpointed), adds the
per-token KL penalty against the reference (coefficient 0.04, k1 or k3), runs GAE (gamma 1, lambda
0.95) on the value model's estimates, and cuts the rollout into ``minibatches`` for each of ``epochs``
passes. Every minibatch is one optimiser step of the Trainer, whose loss (:class:`PPOTask`) is

    clipped policy loss (clip 0.2) + vf_coef * clipped value loss (clip 0.15)
    + ptx_coef * next-token loss on a batch of pretraining rows (the report's pretraining gradient)

Per token, averaged over the step's response tokens (the ptx term is its own per-token mean, weighted
like the step's response tokens). For the first ``value_warmup_steps`` (50) steps only the value
model learns: the policy gets no gradient, so its weights and its optimiser state stay bit-identical.

Which distribution. The ratio is taken between log-probs of the distribution actually sampled from
(temperature, top-k, top-p renormalised: :func:`.rollout.sampled_logprobs`), and the old log-probs are
recomputed by the same forward on the same minibatch tensors the first step will see, so the ratio is
exactly 1 on the first minibatch of every rollout (the engine's own sampled log-probs agree with them
to float rounding; ``behaviour_gap`` logs the mean gap). The KL penalty compares the full
distributions (at the sampling temperature) of the policy and the reference, which exist wherever
either nucleus would cut, and is exactly 0 while the policy is the reference.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from openqwen.train.batches import IGNORE_INDEX
from openqwen.train.config import TrainConfig
from openqwen.train.tasks import Metrics, Task, next_token_loss

from .reward import RewardModel
from .rollout import full_logprobs, sampled_logprobs

KL_ESTIMATORS = ("k1", "k3")

PPO_PANELS = (("reward", ("reward_raw", "reward_norm")), ("ground truth", ("score", "accuracy")),
              ("KL to the reference (per token)", ("kl",)), ("entropy (per token)", ("entropy",)),
              ("value loss", ("value_loss",)), ("policy loss", ("policy_loss",)),
              ("clip fractions", ("clip_frac", "value_clip_frac")), ("ratio", ("ratio",)),
              ("response length", ("response_length",)), ("ptx loss", ("ptx_loss",)),
              ("policy trained (warm-up: 0)", ("policy_trained",)), ("behaviour gap", ("behaviour_gap",)))
"""The PPO page of the run's plots (``ppo.png``): panel title and the metrics drawn in it."""


@dataclass
class PPOSection:
    reward_model: str | None = None
    """Folder of the reward model (``openqwen reward train`` output); the value model starts from it.
    Required unless ``reward`` is ``synthetic`` and ``value_init`` is ``policy``."""
    reward: str = "model"
    """``model``: the reward model scores each rollout. ``synthetic``: the built-in task's ground truth
    (:func:`openqwen.align.synthetic.score_response`), for checking PPO itself."""
    value_init: str = "reward"
    """``reward``: the value model is a copy of the reward model (the report). ``policy``: a copy of the
    policy's backbone with a fresh head (when there is no reward model)."""
    prompts: str = "synthetic"
    """``synthetic`` (the built-in task's train split) or a JSONL file of chat prompts (``messages`` or
    ``prompt`` rows, as the preference files)."""
    prompt_pool: int = 2000
    """Prompts drawn from the built-in task (ignored for a file)."""
    prompts_per_rollout: int = 8
    responses_per_prompt: int = 2
    """Responses sampled per query (the report: two)."""
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 0.9
    """Nucleus of the rollouts (the report: 0.9)."""
    top_k: int = 0
    epochs: int = 2
    """PPO passes over each rollout (not given by the report; TRL's default is 4)."""
    minibatches: int = 2
    """Minibatches (= optimiser steps) per pass; the rollout's rows must divide evenly."""
    clip: float = 0.2
    """Policy ratio clip (not given by the report; the common 0.2)."""
    value_clip: float = 0.15
    """Value-loss clipping around the rollout's values (the report: 0.15)."""
    vf_coef: float = 0.5
    """Weight of the value loss in the sum the loop backpropagates (the value model has its own
    optimiser and LR; the weight matters only through gradient clipping)."""
    kl_coef: float = 0.04
    """Per-token KL penalty against the reference (the report: 0.04)."""
    kl_estimator: str = "k1"
    """``k1``: log pi - log pi_ref; ``k3``: (r - 1) - log r with r = pi_ref / pi (non-negative)."""
    gamma: float = 1.0
    lam: float = 0.95
    """GAE discount and lambda (not given by the report: 1 and 0.95)."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0 and variance 1 over each rollout's response tokens."""
    reward_center: bool = True
    """The running normaliser subtracts the mean (False: only divides by the standard deviation)."""
    value_warmup_steps: int = 50
    """Steps in which only the value model learns (the report: 50)."""
    value_lr: float = 5e-6
    """Peak LR of the value model (the policy's is optim.lr; the report: 5e-6 and 1e-6); same schedule."""
    ptx_coef: float = 0.0
    """Weight of the pretraining-gradient term (0: off). The report does not give it."""
    ptx_data: str | None = None
    """Packed pretraining shards (``openqwen data pack`` output) for the ptx term."""
    ptx_batch_size: int = 4


@dataclass
class PPOConfig(TrainConfig):
    """A training run with the ``ppo`` section (YAML ``ppo: {...}``, overrides ``--ppo.kl_coef 0``)."""

    ppo: PPOSection = field(default_factory=PPOSection)


def check_ppo_section(p: PPOSection) -> None:
    """Refuse settings nothing could run (one line that says what to fix)."""
    if p.reward not in ("model", "synthetic"):
        raise ValueError(f"ppo.reward must be model or synthetic, got {p.reward!r}")
    if p.value_init not in ("reward", "policy"):
        raise ValueError(f"ppo.value_init must be reward or policy, got {p.value_init!r}")
    if p.kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"ppo.kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got {p.kl_estimator!r}")
    for name in ("prompts_per_rollout", "responses_per_prompt", "max_new_tokens", "epochs", "minibatches",
                 "ptx_batch_size"):
        if getattr(p, name) < 1:
            raise ValueError(f"ppo.{name} must be >= 1, got {getattr(p, name)}")
    if (p.prompts_per_rollout * p.responses_per_prompt) % p.minibatches:
        raise ValueError(f"ppo.minibatches={p.minibatches} must divide the rollout's "
                         f"{p.prompts_per_rollout * p.responses_per_prompt} rows (prompts_per_rollout * "
                         "responses_per_prompt)")
    if not 0 < p.top_p <= 1 or p.temperature <= 0:
        raise ValueError("ppo.top_p must be in (0, 1] and ppo.temperature > 0")
    if p.clip <= 0 or p.value_clip <= 0 or p.kl_coef < 0 or p.ptx_coef < 0 or p.value_lr < 0:
        raise ValueError("ppo.clip and ppo.value_clip must be > 0; ppo.kl_coef, ptx_coef, value_lr >= 0")
    if p.ptx_coef > 0 and not p.ptx_data:
        raise ValueError("ppo.ptx_coef > 0 needs ppo.ptx_data (packed pretraining shards)")
    if p.ptx_data and p.ptx_coef == 0:
        raise ValueError("ppo.ptx_data is set but ppo.ptx_coef is 0: set a coefficient or drop the data")


class ValueModel(nn.Module):
    """A backbone and a scalar head read at every position: values [B, T] in fp32."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        lm_head = getattr(backbone, "lm_head", None)
        if lm_head is not None and lm_head.weight is not backbone.embed_tokens.weight:
            lm_head.requires_grad_(False)  # an untied output projection the values never read

    @classmethod
    def from_reward_model(cls, rm: RewardModel) -> "ValueModel":
        """A trainable copy of the reward model (the report initialises the value model from it)."""
        rm = copy.deepcopy(rm)
        for p in rm.parameters():
            p.requires_grad_(True)
        return cls(rm.backbone, rm.head)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.hidden_states(input_ids)).squeeze(-1).float()


def frozen_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy in eval mode (the reference)."""
    out = copy.deepcopy(module).eval()
    for p in out.parameters():
        p.requires_grad_(False)
    return out


# ------------------------------------------------------------------ the formulas (tested one by one)
def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL estimate of pi against pi_ref from the sampled tokens' log-probs."""
    if estimator == "k1":
        return logp - ref_logp
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio  # k3 = r - 1 - log r, >= 0, computed without cancellation


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [N, L] of per-token ``rewards`` with ``values`` on the ``mask`` columns (each
    row's actions contiguous; the value after the last action is 0). Off-mask entries are 0."""
    rewards, values = rewards * mask, values * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    n = mask.sum().clamp(min=1)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                        clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed clipped surrogate over the mask, the ratio, and the clipped tokens (1 where the clip binds)."""
    ratio = torch.exp(logp - old_logp)
    plain, clipped = -adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)
    return (torch.maximum(plain, clipped) * mask).sum(), ratio, (clipped > plain).float() * mask


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed ``0.5 * max((v - R)^2, (v_clip - R)^2)`` over the mask, with ``v_clip`` within ``clip`` of the
    rollout's value, and the tokens where the clipped term is the larger."""
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    plain, clipped = (values - returns) ** 2, (v_clip - returns) ** 2
    return 0.5 * (torch.maximum(plain, clipped) * mask).sum(), (clipped > plain).float() * mask


# ------------------------------------------------------------------ the task
class PPOTask(Task):
    """The loss of one PPO minibatch (see the module doc). ``vocab_limit``: ids past the tokenizer, which
    the engine never samples, are left out of the distributions as there."""

    def __init__(self, cfg: PPOSection, value: ValueModel, policy_lr: float, vocab_limit: int | None = None) -> None:
        self.cfg, self.value, self.policy_lr, self.vocab_limit = cfg, value, policy_lr, vocab_limit

    def modules(self) -> dict[str, nn.Module]:
        return {"value": self.value}

    def lr_scale(self, name: str) -> float:
        return self.cfg.value_lr / self.policy_lr if name == "value" and self.policy_lr > 0 else 1.0

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["action_mask"].sum())

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        extra = int(batch["ptx_input_ids"].numel()) if "ptx_input_ids" in batch else 0
        return 2 * int(batch["input_ids"].numel()) + extra  # policy and value each run every position

    def policy_logprobs(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs of the taken tokens under the sampled distribution, and its entropy, [B, T-1]."""
        c = self.cfg
        logits = model(batch["input_ids"])[:, :-1]
        return sampled_logprobs(logits, batch["input_ids"][:, 1:], c.temperature, c.top_k, c.top_p, self.vocab_limit)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             modules: Mapping[str, nn.Module] | None = None) -> tuple[torch.Tensor, Metrics]:
        c = self.cfg
        mask = batch["action_mask"]
        tokens = mask.sum()
        rows = float(mask.shape[0])
        train_policy = bool(batch["train_policy"])
        value_model = (modules or {}).get("value", self.value)
        values = value_model(batch["input_ids"])[:, :-1]
        vloss, vclipped = clipped_value_loss(values, batch["old_values"], batch["returns"], mask, c.value_clip)
        loss = c.vf_coef * vloss
        with contextlib.nullcontext() if train_policy else torch.no_grad():
            # in the warm-up the policy runs without a graph (metrics only): no gradient reaches it
            logp, entropy = self.policy_logprobs(model, batch)
            ploss, ratio, pclipped = clipped_policy_loss(logp, batch["old_logprobs"], batch["advantages"], mask,
                                                         c.clip)
            ptx = torch.zeros((), device=mask.device)
            if "ptx_input_ids" in batch:
                ptx = next_token_mean(model, batch["ptx_input_ids"], batch["ptx_labels"])
        if train_policy:
            loss = loss + ploss + c.ptx_coef * ptx * tokens.detach()
        metrics: Metrics = {
            "policy_loss": (ploss.detach(), tokens), "value_loss": (vloss.detach(), tokens),
            "entropy": ((entropy.detach() * mask).sum(), tokens), "clip_frac": (pclipped.sum(), tokens),
            "value_clip_frac": (vclipped.sum(), tokens), "ratio": ((ratio.detach() * mask).sum(), tokens),
            "kl": ((batch["kl"] * mask).sum(), tokens), "reward_raw": (batch["reward_raw"].sum(), rows),
            "reward_norm": (batch["reward_norm"].sum(), rows), "response_length": (mask.sum(), rows),
            "policy_trained": (float(train_policy), 1.0), "behaviour_gap": (batch["behaviour_gap"].sum(), rows),
        }
        if "ptx_input_ids" in batch:
            metrics["ptx_loss"] = (ptx.detach(), 1.0)
        if "score" in batch:
            metrics["score"] = (batch["score"].sum(), rows)
        if "correct" in batch:
            metrics["accuracy"] = (batch["correct"].sum(), rows)
        return loss, metrics


def next_token_mean(model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the labelled tokens of a pretraining batch (the ptx term)."""
    count = (labels[:, 1:] != IGNORE_INDEX).sum().clamp_min(1)
    # the trainer's next-token loss (chunked, fused with the head: no [N, vocab] logits)
    return next_token_loss(model, {"input_ids": input_ids, "labels": labels}) / count


def build_value_model(cfg: PPOSection, policy: nn.Module, reward_model: RewardModel | None) -> ValueModel:
    """The value model: a copy of the reward model (the report) or of the policy with a fresh head."""
    if cfg.value_init == "reward":
        if reward_model is None:
            raise ValueError("ppo.value_init=reward needs a reward model (ppo.reward_model)")
        return ValueModel.from_reward_model(reward_model)
    backbone = copy.deepcopy(policy)
    for p in backbone.parameters():
        p.requires_grad_(True)
    head = RewardModel.new_head(policy.config.hidden_size).to(policy.embed_tokens.weight.device)
    return ValueModel(backbone, head)


def ppo_batch_keys() -> tuple[str, ...]:
    """Per-row tensors of a rollout batch (what a minibatch slices)."""
    return ("input_ids", "attention_mask", "action_mask", "old_logprobs", "old_values", "advantages", "returns",
            "kl", "reward_raw", "reward_norm", "behaviour_gap")


