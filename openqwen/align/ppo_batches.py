"""The Trainer's batch source for PPO: rollouts, their rewards and advantages, cut into minibatches.

:class:`PPOBatches` is a :class:`~openqwen.train.sources.BatchSource`. When its buffer is empty it makes
one PPO iteration from the current policy (see :mod:`.ppo` for the recipe) and hands out its
``epochs * minibatches`` minibatches one per ``next()``. All its randomness (which prompts, each
response's sampling seed, the minibatch order) comes from its own generator, and its state - the
generator, the count of batches, the reward normaliser, the rollout still being trained on, the
pretraining stream of the ptx term - is saved in every checkpoint: a run killed anywhere and resumed
trains on exactly the batches of the uninterrupted run.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import torch
from torch import nn

from openqwen.infer.engine import Engine
from openqwen.tokenizer.chat import chat_prompt_ids
from openqwen.train.sources import BatchStream, rank_seed

from .normalize import RunningMoments
from .ppo import PPOSection, PPOTask, gae, kl_penalty, ppo_batch_keys, whiten
from .reward import RewardModel
from .rollout import full_logprobs, generate_rollouts, rollout_params, sampled_logprobs, score_texts

ScoreFn = Callable[[list[dict], str], float]


class PPOBatches:
    """Minibatches of PPO iterations over ``policy`` (the Trainer's model, the same object).

    ``reference``: the frozen starting policy; ``reward_model``: scores rollouts unless ``reward_fn`` (a
    ground truth ``(messages, response) -> float``) is given; ``score_fn``/``correct_fn``: a ground truth
    logged beside the reward (the built-in task's); ``ptx_rows``: pretraining rows for the ptx term.
    ``grad_accum``: micro-batches per optimiser step (the warm-up counts steps). ``precision``: the
    Trainer's, so the old log-probs are computed exactly as its forward computes the new ones.
    """

    def __init__(self, cfg: PPOSection, policy: nn.Module, task: PPOTask, reference: nn.Module, tokenizer: Any,
                 prompts: Sequence[list[dict]], seed: int, reward_model: RewardModel | None = None,
                 reward_fn: ScoreFn | None = None, score_fn: ScoreFn | None = None,
                 correct_fn: Callable[[list[dict], str], bool] | None = None, ptx_rows: Any = None,
                 grad_accum: int = 1, precision: str = "fp32") -> None:
        if reward_model is None and reward_fn is None:
            raise ValueError("PPO needs a reward: a reward model or a reward function")
        if not prompts:
            raise ValueError("the PPO prompt set is empty")
        self.cfg, self.policy, self.task, self.reference = cfg, policy, task, reference
        self.tokenizer, self.prompts, self.seed = tokenizer, list(prompts), seed
        self.reward_model, self.reward_fn, self.score_fn, self.correct_fn = reward_model, reward_fn, score_fn, correct_fn
        self.grad_accum, self.precision = grad_accum, precision
        self.normalizer = RunningMoments(center=cfg.reward_center)
        self.generator = torch.Generator().manual_seed(rank_seed(seed, 0))
        self.ptx = BatchStream(ptx_rows, cfg.ptx_batch_size, seed) if ptx_rows is not None else None
        self.batches = 0
        self.rollouts = 0
        self.buffer: dict[str, torch.Tensor] | None = None
        self.plan: list[torch.Tensor] = []
        self.cursor = 0
        self.engine: Engine | None = None
        self.pad_id = int(getattr(tokenizer, "eos_id", 0) or 0)
        self.vocab_limit = min(policy.config.vocab_size, int(getattr(tokenizer, "vocab_size", policy.config.vocab_size)))

    @property
    def epoch(self) -> None:
        return None

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ the source protocol
    def next(self) -> dict[str, torch.Tensor]:
        if self.buffer is None or self.cursor >= len(self.plan):
            self.make_rollout()
        idx = self.plan[self.cursor]
        self.cursor += 1
        batch = {k: self.buffer[k][idx.to(self.buffer[k].device)] for k in self.buffer}
        step = self.batches // self.grad_accum
        batch["train_policy"] = torch.tensor(float(step >= self.cfg.value_warmup_steps))
        if self.ptx is not None:
            rows = self.ptx.next()
            batch["ptx_input_ids"], batch["ptx_labels"] = rows["input_ids"], rows["labels"]
        self.batches += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "ppo", "seed": self.seed, "batches": self.batches, "rollouts": self.rollouts,
                "generator": self.generator.get_state(), "normalizer": self.normalizer.state_dict(),
                "buffer": None if self.buffer is None else {k: v.cpu() for k, v in self.buffer.items()},
                "plan": [p.clone() for p in self.plan], "cursor": self.cursor,
                "ptx": None if self.ptx is None else self.ptx.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "ppo":
            raise ValueError("the checkpoint was not made by a PPO run: resume PPO in its own train.out_dir")
        if state["seed"] != self.seed:
            raise ValueError(f"the checkpoint's PPO stream has seed {state['seed']}, this run {self.seed}: "
                             "resume with the same data.seed")
        if (state["ptx"] is None) != (self.ptx is None):
            raise ValueError("the checkpoint and this run disagree on the ptx term: keep ppo.ptx_data as it was")
        self.batches, self.rollouts, self.cursor = int(state["batches"]), int(state["rollouts"]), int(state["cursor"])
        self.generator.set_state(state["generator"])
        self.normalizer.load_state_dict(state["normalizer"])
        self.buffer = None if state["buffer"] is None else {k: v.to(self.device) for k, v in state["buffer"].items()}
        self.plan = list(state["plan"])
        if self.ptx is not None:
            self.ptx.load_state_dict(state["ptx"])

    # ------------------------------------------------------------------ one PPO iteration
    def _engine(self) -> Engine:
        if self.engine is None:  # built at the first rollout, after the Trainer moved the policy
            window = max(len(chat_prompt_ids(self.tokenizer, m)) for m in self.prompts)
            max_seq = min(self.policy.config.max_position_embeddings, window + self.cfg.max_new_tokens + 1)
            n = self.cfg.prompts_per_rollout * self.cfg.responses_per_prompt
            self.engine = Engine(self.policy, self.tokenizer, max_batch_size=n, max_seq_len=max_seq,
                                 background=False)
        return self.engine

    @torch.no_grad()
    def make_rollout(self) -> None:
        """Sample, score, penalise, estimate and plan one PPO iteration into the buffer."""
        c, g = self.cfg, self.generator
        picks = torch.randint(len(self.prompts), (c.prompts_per_rollout,), generator=g).tolist()
        params = rollout_params(c.max_new_tokens, c.temperature, c.top_p, c.top_k)
        ro = generate_rollouts(self._engine(), [self.prompts[i] for i in picks], params, c.responses_per_prompt,
                               g, self.pad_id)
        n, size = len(ro), len(ro) // c.minibatches
        self.plan = [p for _ in range(c.epochs) for p in torch.randperm(n, generator=g).split(size)]
        device = self.device
        ids, mask = ro.input_ids.to(device), ro.action_mask.to(device)
        tokens = ids[:, 1:]
        old_lp, old_full = torch.zeros_like(mask), torch.zeros_like(mask)
        # the old log-probs come from the first pass's minibatches, as the Trainer will feed them: the
        # first minibatch's ratio is then exactly 1, not 1 up to the rounding of another batch shape
        for idx in self.plan[:c.minibatches]:
            idx = idx.to(device)
            with self.autocast():
                logits = self.policy(ids[idx])[:, :-1]
            old_lp[idx] = sampled_logprobs(logits, tokens[idx], c.temperature, c.top_k, c.top_p, self.vocab_limit)[0]
            old_full[idx] = full_logprobs(logits, tokens[idx], c.temperature, self.vocab_limit)
        with self.autocast():
            ref_full = full_logprobs(self.reference(ids)[:, :-1], tokens, c.temperature, self.vocab_limit)
            values = self.task.value(ids)[:, :-1].float() * mask
        kl = kl_penalty(old_full, ref_full, c.kl_estimator) * mask
        if self.reward_fn is not None:
            raw = score_texts(self.reward_fn, ro).to(device)
        else:
            with self.autocast():
                raw = self.reward_model(ids, ro.attention_mask.to(device)).float()
        self.normalizer.update(raw)
        norm = self.normalizer.normalize(raw.double()).float()
        rewards = -c.kl_coef * kl
        last = (ro.attention_mask.sum(-1) - 2).to(device)  # the column of each row's last sampled token
        rewards[torch.arange(n, device=device), last] += norm
        adv, returns = gae(rewards, values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            adv = whiten(adv, mask)
        gap = ((old_lp - ro.behaviour_logprobs.to(device)).abs() * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        self.buffer = {"input_ids": ids, "attention_mask": ro.attention_mask.to(device), "action_mask": mask,
                       "old_logprobs": old_lp, "old_values": values, "advantages": adv, "returns": returns,
                       "kl": kl, "reward_raw": raw, "reward_norm": norm, "behaviour_gap": gap}
        assert set(ppo_batch_keys()) <= set(self.buffer)
        if self.score_fn is not None:
            self.buffer["score"] = score_texts(self.score_fn, ro).to(device)
        if self.correct_fn is not None:
            self.buffer["correct"] = score_texts(self.correct_fn, ro).to(device)
        self.cursor = 0
        self.rollouts += 1
