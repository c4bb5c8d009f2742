"""Exact and fuzzy deduplication: content hashes, MinHash signatures, LSH, connected components.

Fuzzy dedup follows the usual recipe (Broder's MinHash, banded LSH):

1. shingles: ``ngram`` consecutive units of :func:`~openqwen.data.normalize.match_key` (words, or
   single CJK characters, so Chinese is counted per character), hashed to 64 bits;
2. a signature of ``num_perm`` values per document: for each of ``num_perm`` hash functions
   ``h_i(x) = (a_i * x + b_i) mod 2**32`` (``a_i`` odd, so ``h_i`` is a bijection of the 32-bit
   shingle hashes ``x``, which are already uniformly random; the image of a random set under a
   fixed bijection is again a random set, so ``P(sig_i(A) == sig_i(B)) = Jaccard(A, B)``), the
   minimum over the document's shingles. 32-bit arithmetic halves the memory traffic of the
   ``shingles x num_perm`` product, which is where the time goes;
3. LSH: the signature is cut into ``bands`` bands of ``rows`` values; documents sharing any band
   are candidates. Candidates are verified (the fraction of equal signature values estimates the
   Jaccard similarity; below ``threshold`` the pair is dropped) and joined into clusters (connected
   components); the first document of every cluster (input order) is kept.

Everything is vectorised with numpy: signatures of a batch of documents are one ``(shingles x
num_perm)`` product followed by ``np.minimum.reduceat``; LSH sorts band hashes; clustering is
union-find done with array operations (hooking + pointer jumping), so a million signatures cluster
in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xxhash

from .normalize import match_key, mix64, shingle_hashes


@dataclass
class MinHashConfig:
    """Fuzzy dedup settings; defaults follow common practice for web-scale dedup.

    ngram: units per shingle (5 words, or 5 CJK characters).
    num_perm: signature length (128: Jaccard estimates with standard error <= 0.045).
    threshold: estimated Jaccard at or above which two documents are duplicates (0.8).
    bands, rows: LSH shape; 0 means derived from ``threshold`` (minimising the weighted areas of
        false positives and false negatives under the S-curve ``1 - (1 - s**rows)**bands``).
    fp_weight: weight of false positives in that choice (0.1). Candidates are verified against the
        signatures afterwards, so a false positive only costs a comparison while a false negative
        keeps a duplicate: the default favours recall. 0.8 / 128 gives 14 bands x 9 rows, which
        makes a pair at Jaccard 0.85 a candidate with probability 0.975 (0.5: 0.027).
    seed: seed of the hash functions (signatures are comparable only for the same seed).
    """

    ngram: int = 5
    num_perm: int = 128
    threshold: float = 0.8
    bands: int = 0
    rows: int = 0
    fp_weight: float = 0.1
    seed: int = 1

    def __post_init__(self) -> None:
        if self.ngram < 1 or self.num_perm < 1:
            raise ValueError("ngram and num_perm must be >= 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if (self.bands > 0) != (self.rows > 0):
            raise ValueError("give both bands and rows, or neither (then they follow from threshold)")
        if self.bands and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")

    def lsh_shape(self) -> tuple[int, int]:
        if self.bands:
            return self.bands, self.rows
        return optimal_bands_rows(self.threshold, self.num_perm, self.fp_weight)


@lru_cache(maxsize=64)
def optimal_bands_rows(threshold: float, num_perm: int, fp_weight: float = 0.1) -> tuple[int, int]:
    """The (bands, rows) with bands x rows <= num_perm that minimise the weighted area of false
    positives (similarity below threshold yet candidate) and false negatives (above, yet not)."""
    s = np.linspace(0.0, 1.0, 2001)
    best, best_cost = (1, num_perm), np.inf
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            p = 1.0 - (1.0 - s**rows) ** bands
            fp = np.trapezoid(np.where(s < threshold, p, 0.0), s)
            fn = np.trapezoid(np.where(s >= threshold, 1.0 - p, 0.0), s)
            cost = fp_weight * fp + (1.0 - fp_weight) * fn
            if cost < best_cost:
                best, best_cost = (bands, rows), cost
    return best


def exact_hash(text: str) -> bytes:
    """128-bit hash of the match key: equal for texts that differ only in case, spacing, punctuation
    or Unicode compatibility forms."""
    return xxhash.xxh3_128_digest(match_key(text).encode("utf-8"))


class MinHasher:
    """Computes MinHash signatures (``uint32[num_perm]``) of texts; see the module docstring."""

    def __init__(self, config: MinHashConfig | None = None, chunk_elements: int = 1 << 22):
        self.config = config or MinHashConfig()
        rng = np.random.default_rng(self.config.seed)
        k = self.config.num_perm
        self.a = (rng.integers(0, 2**31, size=k, dtype=np.uint32) * np.uint32(2) + np.uint32(1))[:, None]
        self.b = rng.integers(0, 2**32, size=k, dtype=np.uint32)[:, None]
        # shingles x num_perm elements per product: bounds memory (4M x 4 bytes = 16 MB)
        self.chunk_shingles = max(1, chunk_elements // k)

    def shingles(self, text: str) -> np.ndarray:
        """The document's shingle hashes, 32 bits each (the low half of the 64-bit mix)."""
        return shingle_hashes(match_key(text), self.config.ngram).astype(np.uint32)

    def _minimum(self, sh: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        # num_perm x shingles: the minimum runs along contiguous memory (6x faster than the transpose)
        with np.errstate(over="ignore"):
            h = np.multiply(self.a, sh[None, :])  # in place from here: no more temporaries
            h += self.b
        return np.minimum.reduceat(h, offsets, axis=1).T

    def signatures(self, texts: list[str]) -> np.ndarray:
        """Signatures of many texts, ``uint32[len(texts), num_perm]``. An empty text (no units) gets
        all-ones (``0xFFFFFFFF``), which matches only other empty texts."""
        k = self.config.num_perm
        out = np.full((len(texts), k), np.iinfo(np.uint32).max, dtype=np.uint32)
        batch: list[np.ndarray] = []
        rows: list[int] = []
        size = 0

        def flush() -> None:
            nonlocal batch, rows, size
            if batch:
                lengths = np.array([x.size for x in batch])
                offsets = np.concatenate(([0], np.cumsum(lengths)[:-1]))
                out[rows] = self._minimum(np.concatenate(batch), offsets)
            batch, rows, size = [], [], 0

        for i, text in enumerate(texts):
            sh = self.shingles(text)
            if sh.size == 0:
                continue
            if sh.size > self.chunk_shingles:  # a big document: running minimum over slices
                sig = np.full(k, np.iinfo(np.uint32).max, dtype=np.uint32)
                for s in range(0, sh.size, self.chunk_shingles):
                    part = sh[s : s + self.chunk_shingles]
                    sig = np.minimum(sig, self._minimum(part, np.array([0]))[0])
                out[i] = sig
                continue
            if size + sh.size > self.chunk_shingles:
                flush()
            batch.append(sh)
            rows.append(i)
            size += sh.size
        flush()
        return out


def jaccard_estimate(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray | float:
    """Fraction of equal signature values (rows of 2-D inputs are compared pairwise)."""
    eq = np.asarray(sig_a) == np.asarray(sig_b)
    return eq.mean(axis=-1)


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``uint64[n, bands]``: one hash per band of ``rows`` consecutive signature values."""
    n = signatures.shape[0]
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    acc = np.zeros((n, bands), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):  # a polynomial in the row values (wrapping), mixed once at the end
            acc *= np.uint64(0x9E3779B97F4A7C15)
            acc += sig[:, :, r]
    # the band number goes into the hash so equal values in different bands never collide
    return mix64(acc ^ mix64(np.arange(bands, dtype=np.uint64) + np.uint64(1))[None, :])


def candidate_pairs(signatures: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges (u, v), u < v, between documents that share at least one LSH band.

    Within a bucket every member is linked to the bucket's first document only (a star, not all
    pairs), which keeps the edge count linear while giving the same connected components.
    """
    n = signatures.shape[0]
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    us, vs = [], []
    bh = band_hashes(signatures, bands, rows)
    for j in range(bands):
        keys = bh[:, j]
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        new_group = np.concatenate(([True], sk[1:] != sk[:-1]))
        group_first = order[np.maximum.accumulate(np.where(new_group, np.arange(n), 0))]
        member = ~new_group
        us.append(group_first[member])
        vs.append(order[member])
    u = np.concatenate(us).astype(np.int64)
    v = np.concatenate(vs).astype(np.int64)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    pairs = np.unique(lo * n + hi)
    return pairs // n, pairs % n


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Component label of each of ``n`` nodes: the smallest node index in its component.

    Union-find with arrays: hook the larger root under the smaller for every edge whose ends have
    different roots (``np.minimum.at``), then compress paths by pointer jumping; repeat.
    """
    parent = np.arange(n, dtype=np.int64)
    u = np.asarray(u, dtype=np.int64)
    v = np.asarray(v, dtype=np.int64)
    while u.size:
        ru, rv = parent[u], parent[v]
        differ = ru != rv
        if not differ.any():
            break
        ru, rv = ru[differ], rv[differ]
        u, v = u[differ], v[differ]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:  # pointer jumping until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


@dataclass
class ClusterResult:
    labels: np.ndarray  # component label (smallest member index) per document
    keep: np.ndarray  # bool: first document of its cluster
    candidate_pairs: int
    verified_pairs: int

    @property
    def num_clusters(self) -> int:
        """Clusters with more than one document."""
        sizes = np.bincount(self.labels, minlength=self.labels.size)
        return int((sizes > 1).sum())


def cluster_signatures(signatures: np.ndarray, config: MinHashConfig | None = None,
                       verify: bool = True) -> ClusterResult:
    """Cluster documents by LSH candidates; ``keep`` marks one document per cluster (the first).

    With ``verify`` a candidate pair joins only when its estimated Jaccard reaches the threshold,
    which removes most LSH false positives at the cost of one comparison per candidate edge.
    """
    config = config or MinHashConfig()
    bands, rows = config.lsh_shape()
    n = signatures.shape[0]
    u, v = candidate_pairs(signatures, bands, rows)
    num_candidates = int(u.size)
    if verify and u.size:
        ok = np.empty(u.size, dtype=bool)
        step = max(1, (1 << 22) // signatures.shape[1])
        for s in range(0, u.size, step):
            est = (signatures[u[s : s + step]] == signatures[v[s : s + step]]).mean(axis=1)
            ok[s : s + step] = est >= config.threshold - 1e-9
        u, v = u[ok], v[ok]
    labels = connected_components(n, u, v)
    keep = labels == np.arange(n)
    return ClusterResult(labels=labels, keep=keep, candidate_pairs=num_candidates, verified_pairs=int(u.size))
