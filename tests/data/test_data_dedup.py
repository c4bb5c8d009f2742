"""MinHash agrees with datasketch; planted duplicates go, distinct documents stay; clustering is exact."""

from __future__ import annotations

import random

import numpy as np
import pytest

from openqwen.data.dedup import (
    MinHashConfig,
    MinHasher,
    cluster_signatures,
    connected_components,
    exact_hash,
    optimal_bands_rows,
)
from openqwen.data.normalize import match_key, units

VOCAB = [f"w{i}" for i in range(5000)]


def _shingle_set(text: str, n: int) -> set[str]:
    u = units(text)
    return {" ".join(u[i : i + n]) for i in range(len(u) - n + 1)}


def _paragraphs(rng: random.Random, k: int, words: int = 60) -> list[str]:
    return [" ".join(rng.choice(VOCAB) for _ in range(words)) + "." for _ in range(k)]


def test_jaccard_estimates_agree_with_datasketch():
    datasketch = pytest.importorskip("datasketch")
    rng = random.Random(0)
    k = 256
    hasher = MinHasher(MinHashConfig(num_perm=k, ngram=3))
    errs_ours, errs_ds = [], []
    for shared in (2, 5, 8, 10):  # paragraphs in common out of 10: Jaccard from ~0.1 to 1
        common = _paragraphs(rng, shared)
        a = "\n\n".join(common + _paragraphs(rng, 10 - shared))
        b = "\n\n".join(common + _paragraphs(rng, 10 - shared))
        sa, sb = _shingle_set(a, 3), _shingle_set(b, 3)
        true = len(sa & sb) / len(sa | sb)
        sig = hasher.signatures([a, b])
        ours = float((sig[0] == sig[1]).mean())
        ma, mb = datasketch.MinHash(num_perm=k, seed=3), datasketch.MinHash(num_perm=k, seed=3)
        ma.update_batch([s.encode() for s in sa])
        mb.update_batch([s.encode() for s in sb])
        theirs = ma.jaccard(mb)
        sigma = max(np.sqrt(true * (1 - true) / k), 1.0 / k)
        assert abs(ours - true) <= 4 * sigma, (shared, ours, true)
        assert abs(theirs - true) <= 4 * sigma, (shared, theirs, true)
        assert abs(ours - theirs) <= 4 * np.sqrt(2) * sigma
        errs_ours.append(abs(ours - true))
        errs_ds.append(abs(theirs - true))
    # over the sweep our estimator is as accurate as datasketch's (within sampling noise)
    assert np.mean(errs_ours) <= 2 * np.mean(errs_ds) + 0.02


def test_estimates_are_unbiased_over_many_pairs():
    # 200 pairs at true Jaccard 0.6: the mean estimate is within 4 standard errors of the mean
    rng = random.Random(1)
    k = 64
    hasher = MinHasher(MinHashConfig(num_perm=k, ngram=1, seed=7))
    est, true = [], []
    for _ in range(200):
        pool = rng.sample(VOCAB, 160)
        a, b = " ".join(pool[:120]), " ".join(pool[40:])  # 80 shared of 160 distinct -> 0.5 ...
        sa, sb = set(pool[:120]), set(pool[40:])
        true.append(len(sa & sb) / len(sa | sb))
        sig = hasher.signatures([a, b])
        est.append((sig[0] == sig[1]).mean())
    t = float(np.mean(true))
    se = np.sqrt(t * (1 - t) / k / len(est))
    assert abs(np.mean(est) - t) <= 4 * se


def test_planted_duplicates_removed_distinct_kept():
    rng = random.Random(2)
    originals = ["\n\n".join(_paragraphs(rng, 6)) for _ in range(40)]
    docs = list(originals)
    expected_dup = {}
    # small edits: 4 words replaced out of 360
    w = originals[0].split(" ")
    for i in rng.sample(range(len(w)), 4):
        w[i] = "edited"
    docs.append(" ".join(w))
    expected_dup[len(docs) - 1] = 0
    # reordered paragraphs
    paras = originals[1].split("\n\n")
    docs.append("\n\n".join(paras[3:] + paras[:3]))
    expected_dup[len(docs) - 1] = 1
    # case, spacing and punctuation changes only: an exact duplicate after normalisation
    docs.append(originals[2].upper().replace(". ", " ; ").replace(" ", "   "))
    expected_dup[len(docs) - 1] = 2
    assert exact_hash(docs[-1]) == exact_hash(originals[2])
    # distinct but related: 2 of 6 paragraphs shared -> Jaccard about 0.25, and 3 of 6 -> ~0.45
    for shared in (2, 3):
        paras = originals[3 + shared].split("\n\n")
        docs.append("\n\n".join(paras[:shared] + _paragraphs(rng, 6 - shared)))
        sa, sb = _shingle_set(docs[-1], 5), _shingle_set(originals[3 + shared], 5)
        assert len(sa & sb) / len(sa | sb) < 0.5
    cfg = MinHashConfig()  # the documented defaults: 5-grams, 128 permutations, threshold 0.8
    result = cluster_signatures(MinHasher(cfg).signatures(docs), cfg)
    removed = set(np.flatnonzero(~result.keep).tolist())
    assert removed == set(expected_dup)
    for dup, orig in expected_dup.items():
        assert result.labels[dup] == orig


def test_chinese_counted_per_character():
    rng = random.Random(3)
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    a = "".join(rng.choice(chars) for _ in range(400))
    assert units(a) == list(a)  # one unit per character, no spaces needed
    b = a[:200] + "好" + a[201:]  # one character changed
    c = "".join(rng.choice(chars) for _ in range(400))
    cfg = MinHashConfig()
    result = cluster_signatures(MinHasher(cfg).signatures([a, b, c]), cfg)
    assert result.keep.tolist() == [True, False, True]


def test_connected_components_match_reference():
    rng = np.random.default_rng(4)
    n = 3000
    u = rng.integers(0, n, 2500)
    v = rng.integers(0, n, 2500)
    labels = connected_components(n, u, v)
    # reference: a plain Python union-find
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(u.tolist(), v.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    ref = [find(i) for i in range(n)]
    assert labels.tolist() == ref


def test_lsh_shape_and_config_errors():
    b, r = MinHashConfig().lsh_shape()
    assert b * r <= 128
    p = lambda s: 1 - (1 - s**r) ** b  # noqa: E731 - probability that a pair becomes a candidate
    assert p(0.85) > 0.95 and p(0.5) < 0.05  # recall above the threshold, few candidates below
    b5, r5 = optimal_bands_rows(0.8, 128, fp_weight=0.5)  # balanced: the curve crosses 1/2 near 0.8
    assert abs((1 / b5) ** (1 / r5) - 0.8) < 0.05
    with pytest.raises(ValueError, match="threshold"):
        MinHashConfig(threshold=1.5)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        MinHashConfig(bands=20, rows=10)
    assert match_key("") == "" and MinHasher().signatures([""]).min() == np.iinfo(np.uint32).max
