"""A small model-based quality classifier: hashed unit n-grams + logistic regression, in numpy.

Features are the units of :func:`~openqwen.data.normalize.match_key` (words, CJK characters) and
their bigrams, hashed into ``2**bits`` buckets (the hashing trick), counted and L2-normalised per
document. The weights are fitted by full-batch gradient descent with AdaGrad steps and L2
regularisation on the log loss; everything is sparse array arithmetic (``np.bincount``), so
training on thousands of documents takes seconds. ``score(texts)`` returns P(high quality).

What counts as "high quality" is whatever the positive examples are: the report trains on
curated reference text against raw web text. Without web data we use :func:`synthetic_negatives`:
word salad, repeated spam, keyboard mash and boilerplate made from the positives' vocabulary, which
teaches the classifier fluent structure rather than topic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .normalize import match_key, ngram_hashes, unit_hashes


@dataclass
class QualityConfig:
    """bits: log2 of the number of hashed feature buckets. ngrams: unit n-gram orders used.
    l2: weight decay. lr: AdaGrad step size. epochs: full-batch steps. max_chars: text read per doc."""

    bits: int = 18
    ngrams: tuple[int, ...] = (1, 2)
    l2: float = 1e-4
    lr: float = 0.5
    epochs: int = 150
    max_chars: int = 20_000


class QualityClassifier:
    """Hashed n-gram logistic regression; see the module docstring."""

    def __init__(self, config: QualityConfig | None = None, weights: np.ndarray | None = None,
                 bias: float = 0.0):
        self.config = config or QualityConfig()
        self.weights = np.zeros(1 << self.config.bits) if weights is None else weights
        self.bias = float(bias)

    def _features(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse rows as (row ids, bucket ids, values), values L2-normalised per row."""
        mask = np.uint64((1 << self.config.bits) - 1)
        rows, cols, vals = [], [], []
        for i, text in enumerate(texts):
            u = unit_hashes(match_key(text[: self.config.max_chars]))
            grams = [u if n == 1 else ngram_hashes(u, n) for n in self.config.ngrams]
            h = np.concatenate(grams) if grams else u
            if h.size == 0:
                continue
            buckets, counts = np.unique((h & mask).astype(np.int64), return_counts=True)
            v = counts.astype(np.float64)
            v /= np.linalg.norm(v)
            rows.append(np.full(buckets.size, i))
            cols.append(buckets)
            vals.append(v)
        if not rows:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)

    def _logits(self, n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> np.ndarray:
        return np.bincount(rows, weights=self.weights[cols] * vals, minlength=n) + self.bias

    def fit(self, texts: list[str], labels: list[int] | np.ndarray, progress: bool = False) -> "QualityClassifier":
        """Fit on texts with labels 1 (good) / 0 (bad); classes are re-weighted to balance."""
        y = np.asarray(labels, dtype=np.float64)
        if y.size != len(texts) or not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
            raise ValueError("fit needs texts with labels 0 and 1 (both present, one per text)")
        n = len(texts)
        rows, cols, vals = self._features(texts)
        # balanced classes: each class carries half of the loss
        sample_w = np.where(y == 1, 0.5 / y.sum(), 0.5 / (n - y.sum()))
        d = self.weights.size
        g2 = np.full(d, 1e-8)
        b2 = 1e-8
        steps = range(self.config.epochs)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="quality classifier", unit="step")
        for _ in steps:
            p = 1.0 / (1.0 + np.exp(-self._logits(n, rows, cols, vals)))
            err = (p - y) * sample_w
            grad = np.bincount(cols, weights=err[rows] * vals, minlength=d) + self.config.l2 * self.weights
            gb = err.sum()
            g2 += grad * grad
            b2 += gb * gb
            self.weights -= self.config.lr * grad / np.sqrt(g2)
            self.bias -= self.config.lr * gb / np.sqrt(b2)
        return self

    def score(self, texts: list[str]) -> np.ndarray:
        """P(good) for each text."""
        rows, cols, vals = self._features(texts)
        return 1.0 / (1.0 + np.exp(-self._logits(len(texts), rows, cols, vals)))

    def save(self, path: str | Path) -> None:
        c = self.config
        np.savez_compressed(path, weights=self.weights.astype(np.float32), bias=self.bias, bits=c.bits,
                            ngrams=np.asarray(c.ngrams), max_chars=c.max_chars)

    @classmethod
    def load(cls, path: str | Path) -> "QualityClassifier":
        z = np.load(path)
        config = QualityConfig(bits=int(z["bits"]), ngrams=tuple(int(x) for x in z["ngrams"]),
                               max_chars=int(z["max_chars"]))
        return cls(config, weights=z["weights"].astype(np.float64), bias=float(z["bias"]))


def synthetic_negatives(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """Low-quality texts made from the vocabulary of ``texts``: word salad (shuffled words),
    repeated spam lines, keyboard mash, and navigation-menu boilerplate."""
    rng = random.Random(seed)
    vocab = [w for t in texts[:2000] for w in t[:5000].split()]
    if not vocab:
        raise ValueError("synthetic_negatives needs some non-empty texts")
    out = []
    for i in range(n):
        kind = i % 4
        length = rng.randint(50, 400)
        if kind == 0:
            out.append(" ".join(rng.choice(vocab) for _ in range(length)))
        elif kind == 1:
            line = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 8)))
            out.append("\n".join([line + " click here buy now"] * rng.randint(10, 40)))
        elif kind == 2:
            out.append(" ".join("".join(rng.choice("asdfjkl;qwertyuiop1234567890") for _ in range(rng.randint(2, 12)))
                                for _ in range(length)))
        else:
            items = ["Home", "About", "Contact", "Login", "Sign up", "Privacy", "Terms", "Cart", "Menu"]
            out.append("\n".join(" | ".join(rng.sample(items, 5)) for _ in range(rng.randint(5, 30))))
    return out


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Precision and recall of *removal* (a document scoring below ``threshold`` is removed, label 0
    = low quality): precision = removed documents that are bad / removed; recall = bad documents
    removed / bad. Also the share of good documents kept."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    removed, bad = scores < threshold, labels == 0
    tp = int((removed & bad).sum())
    return {"threshold": threshold, "precision": tp / max(int(removed.sum()), 1), "recall": tp / max(int(bad.sum()), 1),
            "good_kept": float((~removed & ~bad).sum() / max(int((~bad).sum()), 1)),
            "heldout_good": int((~bad).sum()), "heldout_bad": int(bad.sum())}


def train_with_heldout(good: list[str], bad: list[str] | None = None, heldout: float = 0.2, seed: int = 0,
                       threshold: float = 0.5, config: QualityConfig | None = None
                       ) -> tuple[QualityClassifier, dict[str, float]]:
    """Fit on all but a seeded ``heldout`` share of the good and bad documents (bad ones default to
    :func:`synthetic_negatives`, made from the training share's vocabulary only) and report
    :func:`precision_recall` on the held-out share."""
    rng = random.Random(seed)
    good = list(good)
    rng.shuffle(good)
    cut = max(1, int(len(good) * heldout))
    good_test, good_train = good[:cut], good[cut:]
    if bad is None:
        bad_train = synthetic_negatives(good_train, len(good_train), seed=seed)
        bad_test = synthetic_negatives(good_train, len(good_test), seed=seed + 1)
    else:
        bad = list(bad)
        rng.shuffle(bad)
        bcut = max(1, int(len(bad) * heldout))
        bad_test, bad_train = bad[:bcut], bad[bcut:]
    if not good_train or not bad_train:
        raise ValueError("the quality classifier needs more documents to hold some out")
    clf = QualityClassifier(config).fit(good_train + bad_train, [1] * len(good_train) + [0] * len(bad_train))
    scores = clf.score(good_test + bad_test)
    return clf, precision_recall(scores, np.array([1] * len(good_test) + [0] * len(bad_test)), threshold)
