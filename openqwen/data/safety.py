"""Safety filter: abusive and threatening text, by a word list and, optionally, a classifier.

The report filters pretraining data with a safety classifier besides rules. Ours is the usual two
layers, and what each catches is said plainly:

1. **Word list** (always on): a line is *toxic* when it holds an insult or slur from
   :data:`ABUSE_WORDS` (matched on whole units of the match key, so case, punctuation and
   full-width forms do not hide a word) or matches one of the :data:`THREATS` patterns ("I will
   kill you", "find out where he lives"...). A document is removed as ``toxic`` when more than
   ``max_toxic_line_fraction`` of its non-blank lines are toxic, or when it has at least
   ``max_toxic_lines`` toxic lines. One rude line in a long article stays; a thread of abuse goes.
   A word list has known failures both ways: it misses abuse spelt without listed words, and it
   flags quotation, reporting and reclaimed use; the fraction threshold limits the second.
2. **Classifier** (``scorer``, off unless given): any scorer with ``score(texts) -> P(toxic)``
   (a :class:`~openqwen.data.quality.QualityClassifier` ``.npz`` trained on toxic vs clean text
   with ``openqwen data train-quality --good TOXIC --bad CLEAN``, or ``module:attribute``);
   documents scoring at least ``max_score`` are removed as ``toxic_classifier``.

Each removed document keeps the evidence in the stage's manifest (``removed_examples``), and
documents that stay carry ``toxic_lines`` (their count) for later audits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .normalize import match_key

# English insults and abuse terms in common web use (kept short and explicit on purpose: a longer
# list catches more and flags more innocent text); Chinese terms are matched per character run
ABUSE_WORDS = frozenset({
    "idiot", "idiots", "moron", "morons", "imbecile", "cretin", "loser", "losers", "scumbag", "scum",
    "dumbass", "jackass", "asshole", "assholes", "bastard", "bastards", "bitch", "bitches", "shithead",
    "dickhead", "douchebag", "prick", "twat", "wanker", "retard", "retards", "fuck", "fucking", "fucker",
    "motherfucker", "shit", "bullshit", "stfu", "kys", "trash", "garbage", "worthless", "pathetic",
    "stupid", "dumb", "scumbags", "creep", "subhuman", "vermin",
})
ABUSE_ZH = ("傻逼", "去死", "滚蛋", "废物", "白痴", "脑残", "贱人", "混蛋", "王八蛋", "他妈的")
# threats and incitement, on the match key (lower case, punctuation removed)
THREATS = re.compile(
    r"\b(i will|i ll|i'm going to|im going to|gonna|should|someone should|somebody should) (kill|hurt|beat|stab|shoot)\b"
    r"|\b(kill|hurt|beat up) (you|him|her|them) (all )?(if|when|the)\b"
    r"|\bwhere (he|she|you|they) lives?\b.*\b(pay|hurt|kill|regret)\b"
    r"|\bgo to hell\b|\bkill yourself\b|\bshut up\b"
)
# words of the list that are also ordinary words: they count only next to "you"/"are"/"a"/"such"
# ("bastard": King John's Philip the Bastard speaks in four scenes of the demo corpus, his name a
# speaker label on every speech, which the bare word list took for abuse)
SOFT_WORDS = frozenset({"trash", "garbage", "worthless", "pathetic", "stupid", "dumb", "creep", "loser",
                        "losers", "scum", "vermin", "shit", "bastard", "bastards"})
_ADDRESS = frozenset({"you", "your", "youre", "u", "are", "a", "such", "complete", "total", "bunch", "of",
                      "all", "is", "these", "those", "he", "she", "they"})


@dataclass
class SafetyConfig:
    """max_toxic_line_fraction: share of non-blank lines that may be toxic (0.2). max_toxic_lines:
    toxic lines that remove a document whatever its length (10). scorer: optional toxicity classifier
    (``.npz`` or ``module:attribute``), P(toxic) per document; max_score: removal threshold (0.5)."""

    max_toxic_line_fraction: float = 0.2
    max_toxic_lines: int = 10
    scorer: str | None = None
    max_score: float = 0.5


def toxic_line(line: str) -> bool:
    """Whether one line is abusive or threatening by the word list and threat patterns."""
    if any(w in line for w in ABUSE_ZH):
        return True
    key = match_key(line)
    if not key:
        return False
    words = key.split(" ")
    for i, w in enumerate(words):
        if w in ABUSE_WORDS:
            if w not in SOFT_WORDS:
                return True
            # a soft word is abuse when aimed at someone: "you are worthless", "such a loser"
            if _ADDRESS.intersection(words[max(0, i - 3) : i]):
                return True
    return THREATS.search(key) is not None


def toxic_line_count(text: str) -> tuple[int, int]:
    """(toxic lines, non-blank lines) of a text."""
    lines = [ln for ln in text.split("\n") if ln.strip()]
    return sum(map(toxic_line, lines)), len(lines)


def safety_documents(docs: list[dict[str, Any]], config: SafetyConfig) -> list[list[dict[str, Any]] | str]:
    """``[doc]`` to keep, ``"toxic"`` (word list) or ``"toxic_classifier"`` (the scorer)."""
    out: list[list[dict[str, Any]] | str] = []
    for doc in docs:
        bad, total = toxic_line_count(doc["text"])
        if total and (bad / total > config.max_toxic_line_fraction or bad >= config.max_toxic_lines):
            out.append("toxic")
        else:
            doc["toxic_lines"] = bad
            out.append([doc])
    if config.scorer:
        from .filters import load_scorer

        idx = [i for i, r in enumerate(out) if not isinstance(r, str)]
        if idx:
            scores = np.asarray(load_scorer(config.scorer).score([docs[i]["text"] for i in idx]), dtype=np.float64)
            for i, s in zip(idx, scores):
                docs[i]["toxicity"] = round(float(s), 4)
                if s >= config.max_score:
                    out[i] = "toxic_classifier"
    return out
