"""Perplexity filtering after CCNet (Wenzek et al. 2020): score every document under an n-gram
language model trained on clean reference text, split each language's documents into perplexity
buckets (head, middle, tail by percentile) and keep the head and the middle.

The language model is ours, in numpy, in the manner of KenLM (the package on the index can query
models but not build them): an interpolated Kneser-Ney n-gram model (order 3 by default, one
absolute discount ``D = 0.75`` per order) over the units of
:func:`~openqwen.data.normalize.match_key` (words; single CJK characters), with documents padded
by begin/end markers. n-grams are 64-bit hashes kept in sorted arrays, so a model of a few
million n-grams is tens of MB and scoring is vectorised ``searchsorted`` lookups:

* highest order: ``P(w | h) = max(c(h w) - D, 0) / c(h) + D * N1+(h .) / c(h) * P(w | h')``
* lower orders use continuation counts ``N1+(. h' w)`` in place of ``c``; the unigram level
  interpolates with a uniform share for unseen units, so no probability is ever zero;
* a context never seen falls through to the next lower order.

The stage needs every document's perplexity before it can cut buckets, so it runs like dedup:
scores per shard in parallel, percentiles per language in the driver, then the writes. Documents
whose ``domain`` is exempt (code, math by default: a prose model says nothing about them) pass,
labelled ``ppl_bucket: "exempt"``; the others get ``perplexity`` and ``ppl_bucket``; the tail is
removed as ``perplexity_tail``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .normalize import match_key, ngram_hashes, unit_hashes

_BOS = np.uint64(0x5EED0000000000B5)
_EOS = np.uint64(0x5EED0000000000E5)
DISCOUNT = 0.75


@dataclass
class PerplexityConfig:
    """model: the n-gram model (``.npz`` from ``openqwen data train-lm``); the stage refuses to run
    without one. head_percentile / tail_percentile: bucket edges per language (CCNet: 30 and 60).
    keep: buckets kept. exempt_domains: domains not scored. max_chars: text scored per document.
    sources: the only sources scored (None: all; the others pass as exempt)."""

    model: str | None = None
    head_percentile: float = 30.0
    tail_percentile: float = 60.0
    keep: list[str] = field(default_factory=lambda: ["head", "middle"])
    exempt_domains: list[str] = field(default_factory=lambda: ["code", "math"])
    max_chars: int = 20_000
    # only these sources are scored (None: all); CCNet is a filter for web crawl, curated sources pass
    sources: list[str] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.head_percentile <= self.tail_percentile <= 100:
            raise ValueError("perplexity: need 0 <= head_percentile <= tail_percentile <= 100")
        bad = set(self.keep) - {"head", "middle", "tail"}
        if bad:
            raise ValueError(f"perplexity.keep: unknown bucket(s) {sorted(bad)}; buckets are head, middle, tail")


def _sequence(text: str, order: int) -> np.ndarray:
    u = unit_hashes(match_key(text))
    return np.concatenate([np.full(order - 1, _BOS), u, [_EOS]]).astype(np.uint64)


def _grams(seq: np.ndarray, k: int) -> np.ndarray:
    return ngram_hashes(seq, k) if k > 0 else np.zeros(seq.size, np.uint64)


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[key == query] or 0 for each query (keys sorted)."""
    if keys.size == 0:
        return np.zeros(query.size, values.dtype)
    pos = np.searchsorted(keys, query).clip(max=keys.size - 1)
    return np.where(keys[pos] == query, values[pos], 0)


class NgramLM:
    """Interpolated Kneser-Ney n-gram model over hashed units (see the module docstring)."""

    def __init__(self, order: int = 3, tables: dict[str, np.ndarray] | None = None):
        if order < 1:
            raise ValueError("order must be >= 1")
        self.order = order
        self.t = tables or {}

    def fit(self, texts: Iterable[str]) -> "NgramLM":
        n = self.order
        seqs = [_sequence(t, n) for t in texts]
        if not seqs:
            raise ValueError("the language model needs some reference text")
        for k in range(1, n + 1):
            # events of order k: (context, word) at each predicted position; the highest order counts
            # them, lower orders count distinct left extensions (continuation counts)
            grams, ctxs = [], []
            for s in seqs:
                g = _grams(s, k)[n - k :]  # k-grams ending at predicted positions t >= n-1
                c = _grams(s, k - 1)[n - k : n - k + g.size]
                if k < n:
                    left = _grams(s, k + 1)[n - k - 1 : n - k - 1 + g.size]  # the (k+1)-gram ending there
                    grams.append(np.stack([left, g, c]))
                else:
                    grams.append(np.stack([g, g, c]))
            allv = np.concatenate(grams, axis=1)
            if k < n:  # one event per distinct left extension
                _, first = np.unique(allv[0], return_index=True)
                allv = allv[:, first]
            g_keys, g_idx, g_cnt = np.unique(allv[1], return_index=True, return_counts=True)
            ctx_of_gram = allv[2][g_idx]
            c_keys, c_inv = np.unique(ctx_of_gram, return_inverse=True)
            c_total = np.bincount(c_inv, weights=g_cnt).astype(np.float64)
            c_types = np.bincount(c_inv).astype(np.float64)
            self.t[f"g{k}"], self.t[f"n{k}"] = g_keys, g_cnt.astype(np.float32)
            self.t[f"c{k}"], self.t[f"ct{k}"], self.t[f"cn{k}"] = c_keys, c_total, c_types
        return self

    def log_probs(self, text: str) -> np.ndarray:
        """Natural-log probability of each predicted unit (the units and the end marker)."""
        n = self.order
        s = _sequence(text, n)
        m = s.size - (n - 1)
        p = None
        for k in range(1, n + 1):
            g = _grams(s, k)[n - k : n - k + m]
            cnt = _lookup(self.t[f"g{k}"], self.t[f"n{k}"], g).astype(np.float64)
            if k == 1:
                total, types = float(self.t["ct1"].sum()), float(self.t["cn1"].sum())
                uniform = 1.0 / (types + 1.0)  # every seen unit plus one for all the unseen
                p = np.maximum(cnt - DISCOUNT, 0) / total + DISCOUNT * types / total * uniform
                continue
            c = _grams(s, k - 1)[n - k : n - k + m]
            tot = _lookup(self.t[f"c{k}"], self.t[f"ct{k}"], c)
            typ = _lookup(self.t[f"c{k}"], self.t[f"cn{k}"], c)
            seen = tot > 0
            safe = np.where(seen, tot, 1.0)
            p = np.where(seen, np.maximum(cnt - DISCOUNT, 0) / safe + DISCOUNT * typ / safe * p, p)
        return np.log(p)

    def perplexity(self, text: str) -> float:
        lp = self.log_probs(text)
        return float(np.exp(-lp.mean()))

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, order=self.order, **self.t)

    @classmethod
    def load(cls, path: str | Path) -> "NgramLM":
        z = np.load(path)
        order = int(z["order"])
        return cls(order, {k: z[k] for k in z.files if k != "order"})


@lru_cache(maxsize=2)
def load_lm(path: str) -> NgramLM:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"perplexity model {p} does not exist; train one with openqwen data train-lm")
    return NgramLM.load(p)


def score_documents(docs: list[dict[str, Any]], config: PerplexityConfig) -> tuple[np.ndarray, list[str]]:
    """Perplexity of each document (NaN for exempt ones) and its language label."""
    if not config.model:
        raise ValueError("the perplexity stage needs a model: set perplexity.model (train one with "
                         "openqwen data train-lm --text REFERENCE --out lm.npz)")
    lm = load_lm(config.model)
    ppl = np.full(len(docs), np.nan)
    for i, d in enumerate(docs):
        if (d.get("domain") not in config.exempt_domains and d.get("lang") != "code"
                and (config.sources is None or d.get("source") in config.sources)):
            ppl[i] = lm.perplexity(d["text"][: config.max_chars])
    return ppl, [str(d.get("lang", "und")) for d in docs]


def bucket_cutoffs(ppl: np.ndarray, langs: list[str], config: PerplexityConfig) -> dict[str, list[float]]:
    """Per language, the perplexities at the head and tail percentiles (over its scored documents)."""
    out: dict[str, list[float]] = {}
    langs_arr = np.asarray(langs)
    for lang in sorted(set(langs)):
        v = ppl[(langs_arr == lang) & ~np.isnan(ppl)]
        if v.size:
            out[lang] = [float(np.percentile(v, config.head_percentile)), float(np.percentile(v, config.tail_percentile))]
    return out


def apply_buckets(docs: list[dict[str, Any]], ppl: np.ndarray, cutoffs: dict[str, list[float]],
                  keep: list[str]) -> list[list[dict[str, Any]] | str]:
    """Label each document with its bucket; ``[doc]`` when kept, ``"perplexity_tail"`` (or
    ``perplexity_head``/``perplexity_middle`` when those are not kept) otherwise."""
    out: list[list[dict[str, Any]] | str] = []
    for d, p in zip(docs, ppl):
        if np.isnan(p):
            d["ppl_bucket"] = "exempt"
            out.append([d])
            continue
        head, tail = cutoffs[str(d.get("lang", "und"))]
        bucket = "head" if p <= head else "middle" if p <= tail else "tail"
        d["perplexity"], d["ppl_bucket"] = round(float(p), 2), bucket
        out.append([d] if bucket in keep else f"perplexity_{bucket}")
    return out
