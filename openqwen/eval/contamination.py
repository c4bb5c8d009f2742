"""Contamination report: 13-gram overlap between training data and each evaluation task.

The check of GPT-3 (Brown et al. 2020), which the report's decontamination step follows: an
evaluation item is *contaminated* when any of its 13-unit windows also occurs anywhere in the
training data. Items shorter than 13 units cannot be checked this way and are counted apart.

Units and n-grams are those of the data pipeline's decontamination stage
(:func:`openqwen.data.decontam.text_ngrams`: NFKC, case-folded, punctuation dropped, each CJK
character one unit), and each task's item text comes from :mod:`openqwen.data.evalsets`, so
this report and ``openqwen data decontam`` always agree on which documents and items overlap.

Training n-grams are kept as sorted 64-bit hashes, 8 bytes each, so a corpus of a few hundred
million words fits in memory; a hash collision can only over-report, never hide, overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..data.decontam import text_ngrams
from ..data.evalsets import GENERATED, eval_items
from ..data.normalize import units

N = 13


def words(text: str) -> list[str]:
    """The units n-grams are made of (words; single CJK characters), as decontamination cuts them."""
    return units(text)


def ngram_hashes(text: str, n: int = N) -> np.ndarray:
    return text_ngrams(text, n)


class NgramIndex:
    """The set of ``n``-gram hashes of a training corpus."""

    def __init__(self, n: int = N) -> None:
        self.n = n
        self._parts: list[np.ndarray] = []
        self._sorted: np.ndarray | None = None
        self.documents = 0

    def add(self, text: str) -> None:
        self._parts.append(ngram_hashes(text, self.n))
        self._sorted = None
        self.documents += 1

    def add_all(self, texts: Iterable[str], progress: bool = False) -> "NgramIndex":
        if progress:
            from tqdm import tqdm  # noqa: PLC0415

            texts = tqdm(texts, desc="indexing training n-grams", unit="doc")
        for t in texts:
            self.add(t)
        return self

    @property
    def hashes(self) -> np.ndarray:
        if self._sorted is None:
            self._sorted = np.unique(np.concatenate(self._parts)) if self._parts else np.empty(0, np.uint64)
            self._parts = [self._sorted]
        return self._sorted

    def __len__(self) -> int:
        return len(self.hashes)

    def overlap(self, text: str) -> int:
        """How many of ``text``'s n-grams occur in the index."""
        h = ngram_hashes(text, self.n)
        if not len(h) or not len(self.hashes):
            return 0
        pos = np.searchsorted(self.hashes, h).clip(max=len(self.hashes) - 1)
        return int((self.hashes[pos] == h).sum())


@dataclass
class TaskContamination:
    task: str
    total: int
    checked: int
    """Items with at least ``n`` words (shorter ones cannot hold an n-gram)."""
    contaminated: int
    contaminated_ids: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return self.contaminated / self.checked if self.checked else 0.0


def check_task(index: NgramIndex, task: str, items: Sequence[tuple[str, str]]) -> TaskContamination:
    """``items`` are (id, text) pairs of one task."""
    checked, hits = 0, []
    for item_id, text in items:
        if len(words(text)) < index.n:
            continue
        checked += 1
        if index.overlap(text):
            hits.append(item_id)
    return TaskContamination(task, len(items), checked, len(hits), hits)


def training_texts(paths: Sequence[str | Path]) -> Iterable[str]:
    """Documents of the training data: files or folders the data pipeline reads (``.jsonl``/``.jsonl.gz``
    with a ``text`` field, text files; see :func:`openqwen.data.io.iter_texts`), ``.zip`` archives of
    text files, and ``@LIST`` (a file naming one such path per line)."""
    from ..data.io import iter_texts  # noqa: PLC0415
    from .tasks.perplexity import read_texts  # noqa: PLC0415

    for p in paths:
        p = str(p)
        if p.startswith("@"):
            yield from training_texts([ln.strip() for ln in Path(p[1:]).read_text().splitlines() if ln.strip()])
        elif p.endswith(".zip"):
            yield from read_texts(p)
        else:
            yield from iter_texts(p)


def task_items(task: str, data: str | None = None) -> list[tuple[str, str]]:
    """(id, text) of every item of a harness task: what a model could have memorised (the same text
    decontamination removes documents for; see :mod:`openqwen.data.evalsets`)."""
    from .harness import task_data_path  # noqa: PLC0415

    if task in ("math401", "perplexity"):
        raise ValueError(f"no contamination check for task {task!r} (generated or free-text tasks have no fixed "
                         "items of 13 units)")
    if task in GENERATED:  # the built-in math and tool sets: no harness data file needed
        return eval_items(task, data)
    return eval_items(task, task_data_path(task, data))


def report(training: Sequence[str | Path], tasks: Sequence[str], data: dict[str, str] | None = None,
           n: int = N, progress: bool = False) -> dict[str, Any]:
    """Build the training index once, check every task; a JSON-ready dict."""
    index = NgramIndex(n).add_all(training_texts(training), progress=progress)
    rows = [check_task(index, t, task_items(t, (data or {}).get(t))) for t in tasks]
    return {
        "n": n,
        "training_documents": index.documents,
        "training_ngrams": len(index),
        "tasks": {r.task: {"total": r.total, "checked": r.checked, "contaminated": r.contaminated,
                           "fraction": r.fraction, "contaminated_ids": r.contaminated_ids[:100]} for r in rows},
    }


def markdown(rep: dict[str, Any]) -> str:
    lines = [f"Contamination ({rep['n']}-gram overlap; {rep['training_documents']} training documents, "
             f"{rep['training_ngrams']} distinct n-grams)", "",
             "| task | items | checked | contaminated | fraction |", "|---|---:|---:|---:|---:|"]
    for t, r in rep["tasks"].items():
        lines.append(f"| {t} | {r['total']} | {r['checked']} | {r['contaminated']} | {r['fraction']:.2%} |")
    return "\n".join(lines) + "\n"
