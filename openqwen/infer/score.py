"""Scoring: log-probabilities of given continuation tokens after given prompts.

``Scorer.score(rows)`` takes (prompt ids, continuation ids) pairs and returns, per row, the
log-probability of every continuation token under the model's distribution (the full output head,
as a plain ``log_softmax(model(ids))`` gives it), their sum, and whether each token was the argmax.

How the work is shared:

1. The prefix every prompt of the call starts with is run once (at most up to each prompt's last
   token, which every row computes itself) and its keys/values are copied into each row's KV-cache
   row; a later call whose prompts start with the same tokens (the same few-shot header, the same
   question) reuses them and runs only what is new. Changed weights forget it (:meth:`Scorer.forget`).
2. Rows with the same prompt are one job: the prompt's tail is run once. A prompt with a single row
   runs its continuation in the same pass; a prompt with several (the four answers of a
   multiple-choice question) scores every row's first token from that pass, and rows with longer
   continuations then run them in a second pass from a copy of the prompt's keys/values.
3. Jobs run ``batch_size`` rows per forward, right-padded, each row with its own length in the KV
   cache (no left padding). Logits exist only for the positions that are scored, through the output
   head in chunks of :data:`HEAD_CHUNK` rows, so long windows need little memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..model import KVCache, Qwen
from .scheduler import common_prefix

HEAD_CHUNK = 1024
"""Positions per output-head call: 1024 x 152K fp32 logits are 0.6 GB, whatever the window length
(a whole 16K window would be 10 GB)."""


@dataclass
class ScoreResult:
    """The score of one continuation after its prompt."""

    token_logprobs: list[float]
    """log p(token | everything before it), one per continuation token."""
    total: float
    """Their sum: the continuation's log-likelihood."""
    greedy: bool
    """Every continuation token was the model's argmax (greedy decoding would produce it)."""
    num_tokens: int
    top_logprobs: list[list[tuple[int, float]]] | None = None
    """With ``top_n > 0``: per continuation token, the ``top_n`` most likely (id, log-probability) at
    its position, most likely first, from the same log-softmax as ``token_logprobs`` (the server's echo)."""


@dataclass
class _Job:
    """Tokens to run on top of ``base_len`` cached positions copied from ``base`` (None: row 0 of the
    scorer's prefix cache), and which of their positions score which rows."""

    base: KVCache | None
    base_len: int
    tokens: list[int]
    wants: list[tuple[int, int, int, int]]  # (first fed position that predicts, positions, row, first
    # continuation index they predict)
    snapshot_for: list[int] | None = None  # rows that continue from this job's keys/values (second pass)


class Scorer:
    """Scores rows with ``model``; keeps the last call's shared prefix cached for the next call."""

    def __init__(self, model: Qwen) -> None:
        self.model = model
        self._prefix: KVCache | None = None
        self._prefix_tokens: list[int] = []
        self._batch: KVCache | None = None
        self._top_n = 0  # the current call's top_n, and its alternatives per row and token
        self._top: list[list[list[tuple[int, float]]]] = []
        self.reused_tokens = 0
        """Prefix tokens served from an earlier call's cache instead of being run again."""

    def forget(self) -> None:
        """Drop the cached prefix (its keys/values were computed with other weights)."""
        self._prefix_tokens = []

    @torch.inference_mode()
    def score(self, rows: Sequence[tuple[list[int], list[int]]], batch_size: int, top_n: int = 0
              ) -> list[ScoreResult]:
        """Score ``rows`` of (prompt ids, continuation ids); both non-empty (the caller checks).
        ``top_n``: also the ``top_n`` most likely tokens at every scored position."""
        if not rows:
            return []
        self._top_n = top_n
        # 1. the shared prefix, capped so that every prompt keeps its last token to run
        first = rows[0][0]
        shared = min(min(common_prefix(first, p), len(p) - 1) for p, _ in rows)
        self._extend_prefix(rows[0][0][:shared])
        # 2. one job per distinct prompt
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (p, _) in enumerate(rows):
            groups.setdefault(tuple(p), []).append(i)
        first_pass, conts = [], [c for _, c in rows]
        for prompt, members in groups.items():
            tail = list(prompt[shared:])
            if len(members) == 1:
                (i,) = members
                first_pass.append(_Job(None, shared, tail + conts[i][:-1], [(len(tail) - 1, len(conts[i]), i, 0)]))
            else:
                longer = [i for i in members if len(conts[i]) > 1]
                first_pass.append(_Job(None, shared, tail, [(len(tail) - 1, 1, i, 0) for i in members],
                                   snapshot_for=longer or None))
        logprobs: list[list[float]] = [[0.0] * len(c) for c in conts]
        greedy: list[list[bool]] = [[False] * len(c) for c in conts]
        self._top: list[list[list[tuple[int, float]]]] = [[[] for _ in c] for c in conts]
        second_pass = self._run(first_pass, batch_size, conts, logprobs, greedy)
        self._run(second_pass, batch_size, conts, logprobs, greedy)
        tops = self._top if top_n else [None] * len(conts)
        return [ScoreResult(lp, float(sum(lp)), all(g), len(lp), t) for lp, g, t in zip(logprobs, greedy, tops)]

    # ------------------------------------------------------------------------------ the prefix
    def _extend_prefix(self, tokens: list[int]) -> None:
        """Make row 0 of the prefix cache hold ``tokens``, running only what the last call lacked."""
        if not tokens:
            return  # nothing shared: the jobs read no prefix (and the cached one stays for later calls)
        keep = common_prefix(self._prefix_tokens, tokens)
        if keep == len(tokens):  # already cached (perhaps followed by more, which the jobs do not read)
            self.reused_tokens += keep
            return
        if self._prefix is None or self._prefix.max_length < len(tokens):
            # dense (every position kept): the prefix is continued from any point, rows copy from it
            grown = self.model.new_cache(1, max(len(tokens), 2 * (self._prefix.max_length if self._prefix else 0)),
                                         ring=False)
            if keep and self._prefix is not None:
                _copy_rows(self._prefix, grown, 0, keep)
            self._prefix = grown
        self._prefix.lengths.fill_(keep)
        self.reused_tokens += keep
        self._prefix_tokens = list(tokens[:keep])
        if len(tokens) > keep:
            ids = torch.tensor([tokens[keep:]], device=self.model.embed_tokens.weight.device)
            self.model.hidden_states(ids, cache=self._prefix)
        self._prefix_tokens = list(tokens)

    # ------------------------------------------------------------------------------ the passes
    def _cache_for(self, rows: int, length: int) -> KVCache:
        """A KV cache of ``rows`` rows of at least ``length`` positions, reused between batches."""
        c = self._batch
        if c is None or c.batch_size < rows or c.max_length < length:
            c = self.model.new_cache(max(rows, c.batch_size if c else 0), max(length, c.max_length if c else 0))
            self._batch = c
        return c.rows(0, rows)

    def _run(self, jobs: list[_Job], batch_size: int, conts: list[list[int]],
             logprobs: list[list[float]], greedy: list[list[bool]]) -> list[_Job]:
        """Run ``jobs`` ``batch_size`` at a time, filling ``logprobs``/``greedy``; returns the jobs of
        the second pass (continuations that run from a copy of a job's keys/values)."""
        follow_ups: list[_Job] = []
        device = self.model.embed_tokens.weight.device
        for s in range(0, len(jobs), batch_size):
            batch = jobs[s : s + batch_size]
            T = max(len(j.tokens) for j in batch)
            cache = self._cache_for(len(batch), max(j.base_len for j in batch) + T)
            for i, j in enumerate(batch):
                if j.base_len:
                    _copy_rows(j.base if j.base is not None else self._prefix, cache, i, j.base_len)
            cache.lengths.copy_(torch.tensor([j.base_len for j in batch]))
            ids = torch.zeros(len(batch), T, dtype=torch.long, device=device)
            for i, j in enumerate(batch):
                ids[i, : len(j.tokens)] = torch.tensor(j.tokens)
            # each row's true token count (dynamic NTK decides its alpha from it; the cache advances by it)
            hidden = self.model.hidden_states(ids, cache=cache, num_tokens=torch.tensor([len(j.tokens) for j in batch]))
            self._score_positions(batch, hidden, conts, logprobs, greedy)
            for i, j in enumerate(batch):
                if j.snapshot_for:
                    length = j.base_len + len(j.tokens)
                    snap = self.model.new_cache(1, length)
                    _copy_rows(cache, snap, 0, length, src_row=i)
                    follow_ups += [_Job(snap, length, conts[r][:-1], [(0, len(conts[r]) - 1, r, 1)])
                                   for r in j.snapshot_for]
        return follow_ups

    def _score_positions(self, batch: list[_Job], hidden: torch.Tensor, conts: list[list[int]],
                         logprobs: list[list[float]], greedy: list[list[bool]]) -> None:
        """Output head on the scored positions only; log-probabilities and argmax checks of the targets."""
        pieces, targets, where = [], [], []  # hidden rows, their target ids, (row, continuation index)
        n = 0
        for i, j in enumerate(batch):
            spans: dict[int, int] = {}  # first position -> index of its first hidden row in `pieces`
            for pos, m, row, c0 in j.wants:
                if pos not in spans:  # rows sharing a prompt share its last position's logits
                    spans[pos] = n
                    pieces.append(hidden[i, pos : pos + m])
                    n += m
                base = spans[pos]
                targets += [(base + k, conts[row][c0 + k]) for k in range(m)]
                where += [(row, c0 + k) for k in range(m)]
        h = torch.cat(pieces)
        index = torch.tensor([t[0] for t in targets])
        token = torch.tensor([t[1] for t in targets], device=h.device)
        values = torch.empty(len(targets), dtype=torch.float32)
        hits = torch.empty(len(targets), dtype=torch.bool)
        for c in range(0, h.shape[0], HEAD_CHUNK):
            lp = torch.log_softmax(self.model.lm_head(h[c : c + HEAD_CHUNK]).float(), -1)
            sel = ((index >= c) & (index < c + HEAD_CHUNK)).nonzero()[:, 0]
            rows_in = (index[sel] - c).to(h.device)
            picked = token[sel.to(h.device)]
            values[sel] = lp[rows_in, picked].cpu()
            hits[sel] = (lp.argmax(-1)[rows_in] == picked).cpu()
            if self._top_n:
                top = torch.topk(lp[rows_in], min(self._top_n, lp.shape[-1]), -1)
                for t, ids, vals in zip(sel.tolist(), top.indices.tolist(), top.values.tolist()):
                    row, k = where[t]
                    self._top[row][k] = list(zip(ids, vals))
        for (row, k), v, g in zip(where, values.tolist(), hits.tolist()):
            logprobs[row][k] = v
            greedy[row][k] = g


def _copy_rows(src: KVCache, dst: KVCache, dst_row: int, length: int, src_row: int = 0) -> None:
    """Copy the keys/values of positions [0, length) from ``src`` row ``src_row`` to ``dst`` row ``dst_row``
    (and the RoPE base the keys were rotated with)."""
    dst.copy_row(src, src_row, dst_row, length)  # ring-buffer layers copy the positions they keep
