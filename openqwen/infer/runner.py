"""Runs engine steps on the model: the KV cache, prefill, decode, and the logits.

:class:`ModelRunner` owns the engine's KV cache (one row per slot, allocated at the first step) and
knows two ways to decode: the fused C step (:class:`openqwen.infer.kernels.FusedDecoder`, one call
for every layer of every active row) when the model allows it, else the torch model. Prefill always
runs the torch model. Logits of ids past the tokenizer's vocabulary (embedding rows padded for
alignment) are set to -inf, so generation never emits a token the tokenizer cannot decode.

Models under training. The runner never changes the model's mode. A model in training mode computes
what it computes in eval mode unless it has dropout; with dropout, the runner refuses to run it
(ValueError) unless the engine was built with ``allow_dropout=True``, so dropout never leaks into
rollouts by accident. Weights updated in place are read at every step (the fused step points at the
same memory as the model). What can go stale is derived state - cached prefixes and the fused step's
pointers - so :meth:`ModelRunner.weights_changed` compares a cheap signature of the weights (the sum
of their autograd version counters, which in-place updates bump, the sum of their data pointers,
which replacing a tensor changes, and a process-wide count of optimizer steps, since fused optimizers
update in place without bumping versions) with the one seen last; :meth:`mark_weights_changed` is the
explicit way (e.g. after writing through ``param.data``, which none of these see).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..model import KVCache, Qwen
from .kernels import FusedDecoder

_optimizer_steps = [0]
_watching_optimizers = False


def _count_optimizer_step(_optimizer, _args, _kwargs) -> None:
    _optimizer_steps[0] += 1


def _watch_optimizers() -> None:
    """Count every optimizer step in this process (a counter increment per step, nothing else)."""
    global _watching_optimizers
    if not _watching_optimizers:
        from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: PLC0415

        register_optimizer_step_post_hook(_count_optimizer_step)
        _watching_optimizers = True


class ModelRunner:
    """Executes prefill and decode for the engine on ``model`` over a ``max_batch_size x max_seq_len``
    KV cache. ``fused``: decode with the fused C step when possible. ``vocab_limit``: ids from here on
    get -inf logits."""

    def __init__(self, model: Qwen, max_batch_size: int, max_seq_len: int, vocab_limit: int,
                 fused: bool = True, allow_dropout: bool = False) -> None:
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.vocab_limit = vocab_limit
        self.use_fused = fused
        self.allow_dropout = allow_dropout
        self.cache: KVCache | None = None
        self.fused: FusedDecoder | None = None
        self.fused_why = ""
        self._has_dropout = model.config.dropout > 0 or any(
            isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
        self._fused_built_for: bool | None = None  # the dropout state the fused decoder was built in
        _watch_optimizers()
        self._tracked = [t for t in itertools.chain(model.parameters(), model.buffers()) if not t.is_inference()]
        self._signature = self._weights_signature()
        self._dirty = False

    # ------------------------------------------------------------------------------ model state
    @property
    def dropout_active(self) -> bool:
        """The model would apply dropout now (training mode and a dropout > 0)."""
        return self.model.training and self._has_dropout

    def check_mode(self) -> None:
        """Refuse a model that would sample with dropout unless the engine allows it."""
        if self.dropout_active and not self.allow_dropout:
            raise ValueError(
                "the model is in training mode and has dropout, so its outputs would be random: call "
                "model.eval() before generating or scoring (and model.train() after), or build the Engine "
                "with allow_dropout=True to sample with dropout on purpose")

    def _weights_signature(self) -> tuple[int, int, int]:
        return (sum(t._version for t in self._tracked), sum(t.data_ptr() for t in self._tracked),
                _optimizer_steps[0])

    def mark_weights_changed(self) -> None:
        """The next :meth:`weights_changed` reports a change (for edits no signature can see)."""
        self._dirty = True

    def weights_changed(self) -> bool:
        """Whether the weights changed since the last call; rebuilds the fused step if they did."""
        signature = self._weights_signature()
        changed = self._dirty or signature != self._signature
        self._signature, self._dirty = signature, False
        if changed and self.fused is not None:
            self._build_fused()
        return changed

    # ------------------------------------------------------------------------------ the cache
    def prepare(self) -> None:
        """Allocate the KV cache at the first step; (re)build the fused step when the dropout state
        it was decided for changed."""
        layout = self.model.cache_layout(self.max_seq_len)
        if self.cache is not None and self.cache.layout != layout:
            # windows, sinks or the kv dtype changed since the cache was laid out: every row is stale
            self.cache, self._dirty = None, True  # weights_changed() reports it, so prefixes are forgotten
        if self.cache is None:
            self.cache = self.model.new_cache(self.max_batch_size, self.max_seq_len)
            self._fused_built_for = None
        if self.use_fused and self._fused_built_for is not self.dropout_active:
            self._build_fused()

    def _build_fused(self) -> None:
        self._fused_built_for = self.dropout_active
        self.fused = FusedDecoder.build(self.model, self.cache)
        self.fused_why = "" if self.fused is not None else FusedDecoder.why_not

    @property
    def fused_status(self) -> str:
        """Which code decodes: the fused C step, or the torch model and why."""
        if not self.use_fused:
            return "torch model (fused=False)"
        if self.cache is None:
            return "not decided yet (the first step builds the cache)"
        return "fused C decode step" if self.fused is not None else f"torch model ({self.fused_why})"

    def can_continue(self, slot: int, start: int) -> bool:
        """Whether ``slot``'s cached row can be continued after its first ``start`` positions (ring
        buffers of windowed layers only from the row's end: :meth:`openqwen.kv_cache.KVCache.can_continue`)."""
        return self.cache is None or self.cache.can_continue(slot, start)

    # ------------------------------------------------------------------------------ steps
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final-norm hidden states [M, hidden], ids past the vocab limit at -inf."""
        logits = (self.fused.logits(hidden) if self.fused is not None else self.model.lm_head(hidden)).float()
        if self.vocab_limit < logits.shape[-1]:
            logits[..., self.vocab_limit:] = float("-inf")
        return logits

    def prefill_tail(self, slot: int, start: int, tokens: list[int]) -> torch.Tensor:
        """Prefill ``tokens`` into ``slot`` after its first ``start`` cached positions (prefix reuse);
        returns the logits [vocab] after the last one."""
        cache = self.cache.rows(slot, slot + 1)
        cache.lengths.fill_(start)
        hidden = self.model.hidden_states(torch.tensor([tokens]), cache=cache)
        return self.logits(hidden[:, -1])[0]

    def prefill(self, start: int, prompts: list[list[int]]) -> torch.Tensor:
        """Prefill ``prompts`` into slots ``start, start+1, ...`` as one right-padded batch; returns the
        logits [len(prompts), vocab] after each prompt's last token."""
        cache = self.cache.rows(start, start + len(prompts))
        cache.lengths.zero_()
        ids = torch.zeros(len(prompts), max(len(p) for p in prompts), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        lengths = torch.tensor([len(p) for p in prompts])
        # num_tokens: each row's true length (dynamic NTK decides its alpha from it; the cache advances by it)
        hidden = self.model.hidden_states(ids, cache=cache, num_tokens=lengths)
        return self.logits(hidden[torch.arange(len(prompts)), lengths - 1])  # only the last positions

    def decode(self, start: int, ids: list[int], idle: list[int]) -> torch.Tensor:
        """One decode step feeding ``ids[i]`` to slot ``start + i``; returns logits [len(ids), vocab].
        ``idle`` rows (holes in the span) compute a throwaway token at their position 0."""
        cache = self.cache.rows(start, start + len(ids))
        if idle:
            cache.lengths[idle] = 0
        x = torch.tensor(ids)[:, None]
        if self.fused is not None and not self.dropout_active:
            hidden = self.fused.hidden_states(x, row0=start)
        else:
            hidden = self.model.hidden_states(x, cache=cache)
        if idle:
            cache.lengths[idle] = 0
        return self.logits(hidden[:, 0])
