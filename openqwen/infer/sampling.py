"""Sampling parameters and the logits pipeline of one request.

The semantics follow the release (Hugging Face ``generate``): the repetition penalty is applied to the
raw logits first (a logit > 0 is divided by the penalty, a logit < 0 multiplied, for every token already
present in the prompt or the output), then temperature, then top-k, then top-p (the smallest set of
most likely tokens whose probability reaches ``top_p``; at least one token is always kept).

Every request owns its own random generator, seeded from ``seed``, so a request sampled inside a batch
draws exactly the numbers it would draw alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""The seeds ``torch.Generator.manual_seed`` takes (signed or unsigned 64-bit)."""

LOGPROBS_MODES = ("raw", "sampled")
"""What ``SamplingParams.logprobs_mode`` accepts."""


@dataclass
class SamplingParams:
    """How to pick tokens for one request. Defaults: plain sampling at temperature 1 from the full
    distribution, up to 512 new tokens."""

    max_new_tokens: int = 512
    """Most tokens to generate (the stop token, when one ends the request, counts as one)."""
    temperature: float = 1.0
    """Logits are divided by this; 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the most likely tokens whose probabilities sum to top_p (1 = off)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    repetition_penalty: float = 1.0
    """> 1 discourages tokens already in the prompt or output (1 = off); HF/release semantics."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends when the text contains one; the stop string is not returned."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end generation (in addition to the tokenizer's end-of-text unless ignore_eos)."""
    seed: int | None = None
    """Seed of this request's own generator (None: a fresh random seed)."""
    greedy: bool = False
    """Argmax decoding regardless of temperature/top-p/top-k."""
    constraint: Callable[[], Any] | None = None
    """Constrained decoding: a factory called once per request (so choices sharing these params keep
    their own state) that returns ``process(generated_ids, logits) -> logits``; the engine calls it on
    every step's raw logits, with the ids generated so far, before the repetition penalty and sampling
    (e.g. :func:`openqwen.infer.constrain.tool_call_constraint`). Log-probs are then those of the
    constrained logits."""
    logprobs: bool = False
    """Return the log-probability of every generated token (``Completion.logprobs``), under the
    distribution ``logprobs_mode`` names."""
    top_logprobs: int = 0
    """With ``logprobs``: also the ``top_logprobs`` most likely tokens at each step, as (id,
    log-probability) pairs under the same distribution, most likely first (``Completion.top_logprobs``)."""
    logprobs_mode: str = "raw"
    """``raw``: the model's full distribution (softmax of the logits). ``sampled``: the distribution the
    token was actually drawn from, after the repetition penalty, temperature, top-k and top-p, renormalised
    over the tokens kept (greedy: 0, a point mass); what PPO needs as the behaviour policy's log-probs."""
    ignore_eos: bool = False
    """Do not stop at ``<|endoftext|>`` (benchmarks that need a fixed length)."""
    skip_special_tokens: bool = True
    """Leave special tokens that did not stop the request (e.g. ``<|im_start|>`` in a raw completion)
    out of the text; their ids stay in ``token_ids``. False writes them as their text."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = [s for s in self.stop if s]  # "" would match everywhere; OpenAI ignores it too
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field to fix."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or not (
            math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0
        ):
            raise ValueError(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}")
        if not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a list of strings, got {self.stop!r}")
        if not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be non-negative integers, got {self.stop_token_ids!r}")
        if not isinstance(self.top_logprobs, int) or self.top_logprobs < 0:
            raise ValueError(f"top_logprobs must be an integer >= 0, got {self.top_logprobs!r}")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs=True")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}, got {self.logprobs_mode!r}")
        if self.constraint is not None and not callable(self.constraint):
            raise ValueError(f"constraint must be a factory (callable) or None, got {self.constraint!r}")
        if self.seed is not None and not (isinstance(self.seed, int) and SEED_MIN <= self.seed <= SEED_MAX):
            raise ValueError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}] or None, got {self.seed!r}")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @classmethod
    def chat_defaults(cls, **overrides: Any) -> "SamplingParams":
        """The release's chat defaults: top_p 0.8, top_k off, repetition penalty 1.1, 512 new tokens."""
        base = dict(max_new_tokens=512, temperature=1.0, top_p=0.8, top_k=0, repetition_penalty=1.1)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> "SamplingParams":
        return dataclasses.replace(self, **changes)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF semantics on a [V] row: for seen tokens, logit/penalty if > 0 else logit*penalty."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    # a tiny penalty (1e-300) overflows logit / penalty to +inf, and +inf - +inf is NaN in the softmax:
    # clamp to the largest finite float (the order of the logits, which is all sampling reads, is kept)
    big = torch.finfo(logits.dtype).max
    return torch.where(seen, penalised.clamp(-big, big), logits)


# Top-p looks at the top _NUCLEUS_PROBE tokens first; when their mass already reaches top_p the nucleus
# lies inside them and a full 152k-entry sort is not needed. The result is exactly the full-sort result.
_NUCLEUS_PROBE = 256


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature`` with the largest logit moved to 0 first (the softmax is the same), so no
    temperature > 0 can produce NaN: at 1e-300 the gaps overflow to -inf and the most likely token(s)
    keep probability 1 (the limit of sampling as the temperature falls to 0) instead of inf - inf."""
    top = logits.max()
    if not torch.isfinite(top):  # all -inf (a constraint left nothing) or +inf: leave it to the caller's check
        return logits / temperature
    shifted = logits - top
    if temperature >= torch.finfo(logits.dtype).tiny:
        return shifted / temperature
    # below the smallest normal float the divisor itself rounds to 0: every gap > 0 is infinitely large
    return torch.where(shifted < 0, float("-inf"), 0.0)


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Temperature, top-k, top-p (in that order, as HF) on a fp32 [V] row; removed tokens get -inf."""
    if temperature != 1.0:
        logits = apply_temperature(logits, temperature)
    V = logits.shape[-1]
    if top_k and top_k < V:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        probe = min(V, max(_NUCLEUS_PROBE, top_k if top_k else 0))
        vals, idx = torch.topk(logits, probe)  # sorted descending
        probs = torch.softmax(logits, -1)[idx]
        if probe < V and float(probs.sum()) < top_p:
            vals, idx = torch.sort(logits, descending=True)
            probs = torch.softmax(vals, -1)
        # HF sorts ascending and removes tokens whose cumulative mass stays <= 1 - top_p. In descending
        # order that is: keep token i when the mass strictly before it is < top_p (float-equal to HF's
        # rule up to rounding); the first token is always kept.
        before = torch.cumsum(probs, 0) - probs
        keep_n = max(1, int((before < top_p).sum()))
        keep = idx[:keep_n]
        out = torch.full_like(logits, float("-inf"))
        out[keep] = logits[keep]
        logits = out
    return logits


def sampling_logits(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None) -> torch.Tensor:
    """The logits a fp32 [V] row of raw logits is sampled from: repetition penalty, then (unless greedy)
    temperature, top-k, top-p; removed tokens hold -inf. Their softmax is the sampled distribution."""
    if params.repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.is_greedy:
        return logits
    return filter_logits(logits, params.temperature, params.top_k, params.top_p)


def sample_token(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None, generator: torch.Generator | None,
    filtered: torch.Tensor | None = None,
) -> int:
    """Pick the next token from a fp32 [V] row of raw logits (``filtered``: its :func:`sampling_logits`,
    when the caller has them already)."""
    if filtered is None:
        filtered = sampling_logits(logits, params, seen)
    if params.is_greedy:
        return int(torch.argmax(filtered))
    probs = torch.softmax(filtered, -1)
    if not bool(torch.isfinite(probs).all()):  # NaN logits (a broken model) or nothing left to sample
        raise ValueError("the sampling distribution is not finite (NaN logits, or every token removed)")
    return draw_index(probs, generator)


DRAW_BLOCK = 1024
"""Probabilities per block in :func:`draw_index`'s two-level inverse CDF."""


def draw_index(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn from a fp32 [V] probability vector (any positive total), by the inverse CDF.

    ``torch.multinomial`` spends ~4 ms on a 151,936-token vocabulary on two cores, a sixth of a batch-1
    decode step. This takes ~0.2 ms: one uniform number, block sums and their running total in
    float64 to find the block, then the running total inside that one block. A token of probability 0
    is never drawn (the running total does not rise across it)."""
    n = probs.numel()
    pad = (-n) % DRAW_BLOCK
    blocks = (torch.nn.functional.pad(probs, (0, pad)) if pad else probs).view(-1, DRAW_BLOCK)
    totals = blocks.sum(1, dtype=torch.float64).cumsum(0)
    u = float(torch.rand((), dtype=torch.float64, generator=generator)) * float(totals[-1])
    b = min(int(torch.searchsorted(totals, torch.tensor(u, dtype=torch.float64), right=True)), len(totals) - 1)
    inner = blocks[b].to(torch.float64).cumsum(0)
    rest = u - (float(totals[b - 1]) if b else 0.0)
    i = min(int(torch.searchsorted(inner, torch.tensor(rest, dtype=torch.float64), right=True)), DRAW_BLOCK - 1)
    index = b * DRAW_BLOCK + i
    if index >= n or not float(probs[index]) > 0.0:  # rounding at a block's edge: the exact slow path
        return int(torch.multinomial(probs, 1, generator=generator))
    return index


def sampled_logprob(filtered: torch.Tensor, token: int, params: SamplingParams) -> float:
    """Log-probability of ``token`` under the distribution sampled from (``filtered``: its
    :func:`sampling_logits`): 0 for greedy, else the log-softmax over the kept tokens."""
    if params.is_greedy:
        return 0.0
    return float(torch.log_softmax(filtered, -1)[token])
