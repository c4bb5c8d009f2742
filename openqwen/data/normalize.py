"""Text normalisation: one light form for storage, one aggressive form for matching.

* :func:`normalize_text` is what later stages and the tokenizer see: Unicode NFC (the tokenizer's
  own normal form), ``\\r\\n`` -> ``\\n``, control characters removed, trailing spaces stripped,
  runs of blank lines collapsed to one. Leading indentation is kept (code depends on it).
* :func:`match_key` is what exact dedup, MinHash and decontamination compare: NFKC (full-width
  and compatibility forms folded), case-folded, punctuation and symbols dropped, whitespace
  collapsed, and every CJK character set apart as its own unit, so that Chinese is counted per
  character while other scripts are counted per word.
"""

from __future__ import annotations

import re
import unicodedata

import numpy as np

# CJK ideographs (unified + extension A + compatibility), kana, hangul syllables: one unit per char
CJK_CLASS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")
# ASCII bytes that are not letters or digits become spaces (bytes >= 128 pass through): a byte
# table runs at ~100 MB/s where a regex over every separator runs at ~6 MB/s
_ASCII_TABLE = bytes(c if (c >= 128 or chr(c).isalnum()) else 32 for c in range(256))
# units of non-ASCII text: a single CJK character, or a run of letters/digits that are not CJK
_UNIT = re.compile(f"[{CJK_CLASS}]|[^\\W_{CJK_CLASS}]+")


def normalize_text(text: str) -> str:
    """The stored form of a document (see module docstring); idempotent."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _TRAILING.sub("", text)
    text = _BLANK_RUNS.sub("\n\n", text)
    return text.strip("\n")


def match_key(text: str) -> str:
    """The form compared by dedup and decontamination: space-separated units, lower case."""
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = text.casefold()
    if text.isascii():
        # a byte table turns separators into spaces at ~100 MB/s (a regex manages ~6 MB/s)
        return " ".join(text.encode("ascii").translate(_ASCII_TABLE).decode("ascii").split())
    # one C-level pass: each CJK character, or a run of other letters/digits, is a unit
    return " ".join(_UNIT.findall(text))


def units(text: str) -> list[str]:
    """The units (words; single CJK characters) of :func:`match_key`; for inspection and tests."""
    key = match_key(text)
    return key.split(" ") if key else []


# ---------------------------------------------------------------- vectorised unit hashing

_P = 0x100000001B3  # FNV prime: odd, so it has an inverse mod 2**64
_P_INV = pow(_P, -1, 1 << 64)
_POWERS = np.ones(1, dtype=np.uint64)  # P**i mod 2**64
_INV_POWERS = np.ones(1, dtype=np.uint64)  # P**-i mod 2**64


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    global _POWERS, _INV_POWERS
    if _POWERS.size < n:
        size = max(n, 2 * _POWERS.size)
        p = np.full(size, _P, dtype=np.uint64)
        p[0] = 1
        q = np.full(size, _P_INV, dtype=np.uint64)
        q[0] = 1
        _POWERS = np.cumprod(p, dtype=np.uint64)  # wraps mod 2**64 by design
        _INV_POWERS = np.cumprod(q, dtype=np.uint64)
    return _POWERS[:n], _INV_POWERS[:n]


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised: spreads every input bit over all output bits."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def unit_hashes(key: str) -> np.ndarray:
    """64-bit hashes of the space-separated units of a :func:`match_key` string, one per unit.

    Vectorised over bytes, no Python loop per unit or shingle: with a space appended, every unit
    is its bytes plus one space. The polynomial ``sum(b_i * P**i)`` over a unit's bytes comes from
    one ``np.add.reduceat``; multiplying by ``P**-start`` (``P`` is odd, so invertible mod 2**64)
    makes it independent of where the unit sits; the length goes into the top bits and
    :func:`mix64` finishes. uint64 arithmetic wraps, which is what we want.
    """
    if not key:
        return np.zeros(0, dtype=np.uint64)
    b = np.frombuffer((key + " ").encode("utf-8", "surrogatepass"), dtype=np.uint8)
    ends = np.flatnonzero(b == 32) + 1  # one past each unit's trailing space
    starts = np.concatenate(([0], ends[:-1]))
    powers, inv_powers = _powers(b.size)
    with np.errstate(over="ignore"):
        sums = np.add.reduceat(b.astype(np.uint64) * powers, starts) * inv_powers[starts]
        lengths = (ends - starts).astype(np.uint64)
        return mix64(sums ^ (lengths << np.uint64(56)))


def ngram_hashes(u: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the ``n``-grams of a sequence of unit hashes (``len(u) - n + 1`` of them)."""
    m = u.size - n + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):  # a loop over the n-gram width, not over n-grams
            acc = acc * np.uint64(0x9E3779B97F4A7C15) + u[k : k + m]
    return mix64(acc ^ np.uint64(n))


def shingle_hashes(key: str, ngram: int) -> np.ndarray:
    """64-bit hashes of the ``ngram``-unit shingles of a match key (one shingle of all units when
    the text is shorter than ``ngram``, so short documents still get a signature)."""
    u = unit_hashes(key)
    if u.size == 0:
        return u
    return ngram_hashes(u, min(ngram, u.size))
