"""Decontamination: remove training documents that share long n-grams with evaluation sets.

Both sides are normalised as for dedup (:func:`~openqwen.data.normalize.match_key`: case, width
and punctuation folded; Chinese per character) and cut into ``ngram``-unit n-grams (13 by default,
as in GPT-3 and the Qwen-era practice) by :func:`text_ngrams`, the one n-gram tokenisation that the
contamination report (:mod:`openqwen.eval.contamination`) uses too, so the two never disagree about
a document. A document is contaminated when at least ``min_matches`` of its n-grams appear in the
evaluation index. Evaluation items shorter than ``ngram`` units cannot be matched this way; they
are counted in the index stats (``too_short``), not hidden.

Evaluation sets: every task ``openqwen eval`` knows (:data:`~openqwen.data.evalsets.EVAL_SETS`,
read by :mod:`~openqwen.data.evalsets`): HumanEval and MMLU from the fetched artifacts, MBPP, GSM8K,
C-Eval and CMMLU from the files named in ``eval_files``, the built-in math and tool sets where
installed; a set whose data is absent is skipped with the reason in the manifest. Plus any
JSONL/text files (``text`` field) given as ``extra``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .evalsets import EVAL_SETS, GENERATED, READERS, EvalSetUnavailable, eval_items
from .io import atomic_write_bytes, iter_texts
from .normalize import match_key, ngram_hashes, unit_hashes, units


@dataclass
class DecontamConfig:
    """ngram: units per n-gram (13). eval_sets: evaluation sets checked (default: all of
    :data:`~openqwen.data.evalsets.EVAL_SETS`; one whose data is absent is skipped, with the reason
    in the manifest). eval_files: set name -> its file or folder, for the sets without a built-in
    default (mbpp, gsm8k, ceval, cmmlu, mc) or to override one. extra: more evaluation files
    (JSONL with ``text``, or text files). min_matches: n-grams in common needed."""

    ngram: int = 13
    eval_sets: list[str] = field(default_factory=lambda: list(EVAL_SETS))
    eval_files: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    min_matches: int = 1

    def __post_init__(self) -> None:
        known = set(READERS) | set(GENERATED)
        unknown = [s for s in list(self.eval_sets) + list(self.eval_files) if s not in known]
        if unknown:
            raise ValueError(f"unknown evaluation set(s) {unknown}; known: {', '.join(sorted(known))} "
                             "(pass other files as decontam.extra)")
        if self.ngram < 1 or self.min_matches < 1:
            raise ValueError("decontam ngram and min_matches must be >= 1")


def eval_set_texts(name: str, path: str | Path | None = None) -> list[str]:
    """Texts of an evaluation set (raises FileNotFoundError when its data is absent)."""
    return [text for _, text in eval_items(name, path)]


def text_ngrams(text: str, ngram: int = 13) -> np.ndarray:
    """Hashes of the text's ``ngram``-unit n-grams (empty when it has fewer units): the n-grams
    that decontamination and the contamination report both compare."""
    return ngram_hashes(unit_hashes(match_key(text)), ngram)


def build_index(texts: list[str], ngram: int = 13) -> tuple[np.ndarray, dict[str, int]]:
    """Sorted unique n-gram hashes of the evaluation texts, and counts (items, too_short, ngrams).

    All texts are hashed in one pass over their joined keys; n-grams that would straddle two texts
    are masked out, so the result equals hashing each text alone (thousands of short items would
    otherwise cost thousands of small numpy calls).
    """
    keys = [match_key(t) for t in texts]
    counts = np.array([k.count(" ") + 1 if k else 0 for k in keys], dtype=np.int64)
    too_short = int((counts < ngram).sum())
    u = unit_hashes(" ".join(k for k in keys if k))
    g = ngram_hashes(u, ngram)
    if g.size:
        owner = np.repeat(np.arange(counts.size), counts)  # text of every unit
        valid = owner[: g.size] == owner[ngram - 1 : ngram - 1 + g.size]
        g = g[valid]
    index = np.unique(g)
    return index, {"items": len(texts), "too_short": too_short, "ngrams": int(index.size)}


def build_eval_index(config: DecontamConfig, out_path: str | Path, log=print) -> dict[str, Any]:
    """Build the index of all configured evaluation sets and save it as ``.npy``; returns stats."""
    texts: list[str] = []
    sets: dict[str, Any] = {}
    names = list(dict.fromkeys(list(config.eval_sets) + list(config.eval_files)))
    for name in names:
        try:
            t = eval_set_texts(name, config.eval_files.get(name))
        except EvalSetUnavailable as e:
            log(f"warning: decontamination skips {name}: {e}")
            sets[name] = {"skipped": str(e)}
            continue
        texts += t
        sets[name] = {"items": len(t), "too_short": sum(len(units(x)) < config.ngram for x in t)}
    for path in config.extra:
        t = list(iter_texts(path))
        sets[str(path)] = {"items": len(t)}
        texts += t
    index, stats = build_index(texts, config.ngram)
    import io

    buf = io.BytesIO()
    np.save(buf, index)
    atomic_write_bytes(out_path, buf.getvalue())
    return {"sets": sets, **stats}


@lru_cache(maxsize=4)
def _load_index(path: str) -> np.ndarray:
    return np.load(path)


def contamination_matches(text: str, index: np.ndarray, ngram: int = 13) -> int:
    """How many of the text's n-grams occur in the (sorted) evaluation index."""
    h = text_ngrams(text, ngram)
    if h.size == 0 or index.size == 0:
        return 0
    pos = np.searchsorted(index, h)
    pos[pos == index.size] = 0
    return int((index[pos] == h).sum())


def decontaminate_documents(docs: list[dict[str, Any]], index_path: str, ngram: int,
                            min_matches: int = 1) -> list[list[dict[str, Any]] | str]:
    """``[doc]`` for clean documents, ``"contaminated"`` for the others."""
    index = _load_index(str(index_path))
    return ["contaminated" if contamination_matches(d["text"], index, ngram) >= min_matches else [d]
            for d in docs]
