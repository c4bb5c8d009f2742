"""PPO rollouts from the shared engine, and the log-probs of the distribution they were sampled from.

:func:`generate_rollouts` asks the one :class:`~openqwen.infer.engine.Engine` (built over the policy
being trained, so every rollout comes from the current weights: the engine notices the optimiser's
in-place updates by itself) for ``responses_per_prompt`` answers to each chat prompt, sampled with
top-p 0.9 as the report, each with a seed drawn from the caller's generator (the rollouts are a pure
function of the weights and that generator's state, which makes resumed runs exact). It returns the
ids as right-padded ``[N, T]`` tensors with the masks PPO needs, and the engine's log-probs of each
sampled token under the distribution it was *actually drawn from* (temperature, top-k, top-p
renormalised: ``SamplingParams.logprobs_mode="sampled"``).

:func:`sampled_logprobs` computes the same distribution from a training forward's logits: the token's
log-prob after the same temperature / top-k / top-p rules, renormalised over the tokens kept, and that
distribution's entropy. PPO's ratio is taken between two such log-probs, so the distribution that is
optimised is the one that was sampled (frameworks that take the ratio under the full softmax while
sampling with top-p optimise another policy than the one that acts). Alignment of every ``[N, T-1]``
tensor: column ``t`` is about the token ``input_ids[:, t+1]``, predicted by the logits at ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams
from openqwen.tokenizer.chat import chat_prompt_ids


@dataclass
class Rollouts:
    """``N = prompts * responses_per_prompt`` sampled conversations, row ``i`` answering
    ``prompt_index[i]``. ``input_ids`` [N, T]: prompt + response, right-padded with ``pad_id``;
    ``attention_mask`` [N, T]: 1 on real tokens; ``action_mask`` [N, T-1]: 1 where column t's next token
    (``input_ids[:, t+1]``) was sampled; ``behaviour_logprobs`` [N, T-1]: the engine's log-prob of that
    token under the distribution it was drawn from (0 off the actions)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    behaviour_logprobs: torch.Tensor
    prompt_index: torch.Tensor
    response_lengths: torch.Tensor
    messages: list[list[dict]]
    responses: list[str]
    finish_reasons: list[str]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def rollout_params(max_new_tokens: int, temperature: float = 1.0, top_p: float = 0.9, top_k: int = 0,
                   seed: int = 0) -> SamplingParams:
    """The sampling of a rollout: sampled log-probs on, no repetition penalty (PPO recomputes the
    sampled distribution from training logits, which know no penalty history)."""
    if temperature <= 0:
        raise ValueError("ppo.temperature must be > 0: PPO needs a stochastic policy (greedy rollouts have "
                         "no log-probs to improve)")
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          seed=seed, logprobs=True, logprobs_mode="sampled", repetition_penalty=1.0)


def generate_rollouts(engine: Engine, prompts: Sequence[Sequence[dict]], params: SamplingParams,
                      responses_per_prompt: int, generator: torch.Generator, pad_id: int,
                      window: int | None = None) -> Rollouts:
    """Sample ``responses_per_prompt`` answers per chat prompt from ``engine``'s model (each with its own
    seed from ``generator``) and lay them out as tensors (see :class:`Rollouts`)."""
    if responses_per_prompt < 1:
        raise ValueError(f"ppo.responses_per_prompt must be >= 1, got {responses_per_prompt}")
    window = min(window or engine.max_seq_len, engine.max_seq_len - 1)
    messages = [list(m) for m in prompts for _ in range(responses_per_prompt)]
    seeds = torch.randint(0, 2**62, (len(messages),), generator=generator).tolist()
    outs = engine.chat(messages, [params.replace(seed=int(s)) for s in seeds], window=window)
    prompt_ids = [chat_prompt_ids(engine.tokenizer, m, window) for m in messages]
    T = max(len(p) + len(o.token_ids) for p, o in zip(prompt_ids, outs))
    n = len(messages)
    input_ids = torch.full((n, T), pad_id, dtype=torch.long)
    attention = torch.zeros(n, T, dtype=torch.long)
    action = torch.zeros(n, T - 1, dtype=torch.float32)
    behaviour = torch.zeros(n, T - 1, dtype=torch.float32)
    for i, (p, o) in enumerate(zip(prompt_ids, outs)):
        ids = p + o.token_ids
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        action[i, len(p) - 1:len(ids) - 1] = 1.0
        behaviour[i, len(p) - 1:len(ids) - 1] = torch.tensor(o.logprobs, dtype=torch.float32)
    return Rollouts(input_ids=input_ids, attention_mask=attention, action_mask=action, behaviour_logprobs=behaviour,
                    prompt_index=torch.arange(len(prompts)).repeat_interleave(responses_per_prompt),
                    response_lengths=torch.tensor([len(o.token_ids) for o in outs]), messages=messages,
                    responses=[o.text for o in outs], finish_reasons=[o.finish_reason for o in outs])


def _limit(z: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """Ids from ``vocab_limit`` on get -inf, as the engine does (embedding rows padded past the tokenizer)."""
    if vocab_limit is None or vocab_limit >= z.shape[-1]:
        return z
    return torch.cat([z[..., :vocab_limit], torch.full_like(z[..., vocab_limit:], float("-inf"))], -1)


def sampled_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                     top_p: float = 1.0, vocab_limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of ``tokens`` [..., ] under the sampled distribution of ``logits`` [..., V], and that
    distribution's entropy (both fp32, differentiable through the logits).

    The same rules as the engine's sampler (:func:`openqwen.infer.sampling.filter_logits`): divide by
    the temperature, keep the top-k, keep the smallest most likely set whose mass reaches top-p (a
    token is kept when the mass strictly before it is < top_p; the first always), renormalise. Which
    tokens are kept is decided without gradient; the given token is always kept, so a token the engine
    drew at a near-tie that this forward ranks just outside the set still gets a finite log-prob."""
    z = _limit(logits.float() / temperature, vocab_limit)
    with torch.no_grad():
        keep = torch.isfinite(z)
        V = z.shape[-1]
        if top_k and top_k < V:
            kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
            keep &= z >= kth
        if top_p < 1.0:
            masked = z.masked_fill(~keep, float("-inf"))
            vals, idx = torch.sort(masked, dim=-1, descending=True)
            probs = torch.softmax(vals, -1)
            before = torch.cumsum(probs, -1) - probs
            keep_sorted = before < top_p
            keep_sorted[..., 0] = True
            keep &= torch.zeros_like(keep).scatter(-1, idx, keep_sorted)
        keep.scatter_(-1, tokens.unsqueeze(-1), True)
    z = z.masked_fill(~keep, float("-inf"))
    logp = torch.log_softmax(z, -1)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp.masked_fill(~keep, 0.0)).sum(-1)
    return token_logp, entropy


def full_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                  vocab_limit: int | None = None) -> torch.Tensor:
    """Log-prob of ``tokens`` under the full softmax of ``logits / temperature`` (fp32): the KL penalty's
    distributions, which exist for the reference even where its nucleus would exclude a token."""
    z = _limit(logits.float() / temperature, vocab_limit)
    return torch.log_softmax(z, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def score_texts(score_fn: Any, rollouts: Rollouts) -> torch.Tensor:
    """``score_fn(messages, response) -> float`` over every rollout (a ground-truth reward), as [N] fp32."""
    return torch.tensor([float(score_fn(m, r)) for m, r in zip(rollouts.messages, rollouts.responses)])
