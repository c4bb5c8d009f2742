"""The built-in verifiable preference task: arithmetic questions with a checkable answer and format.

Every prompt is one user turn, ``What is A + B?`` or ``What is A - B?`` with single-digit operands
(0..``MAX_OPERAND`` = 9, subtraction never negative: 100 sums and 55 differences). The preferred reply
is the correct result in the fixed format ``The answer is N.``; the ground-truth reward
(:func:`score_response`) is

==========================================================  =====
the reply is exactly ``The answer is N.`` with the right N   1.0
the right N, but not in that format (its last integer)      0.5
the format, but a wrong N                                   0.25
anything else                                               0.0
==========================================================  =====

so a policy can climb by format first and by arithmetic next, and a reward model has to check the
number (not only the wording) to rank the pairs of :func:`preference_pairs`: wrong numbers are guesses
from the answers' own range 0..18, so magnitude alone does not give them away.

Why single digits: a nano model (1M parameters, minutes of CPU) cannot check two-digit sums (with
operands up to 50 the nano reward model ranked wrong-number pairs at 61-67 %, the SFT policy stated
the right number 0-5 % of the time), so nothing correct was there to learn or reinforce. The
one-digit table is small enough to learn, and still not given away: held-out questions are never
seen, so getting them right needs the arithmetic (e.g. ``1 + 3`` is held out, ``3 + 1`` is trained).

Splits are disjoint by construction: an operand triple ``(A, op, B)`` belongs to ``heldout`` when
``(7*A + 11*B + 3*(op == '-')) % 5 == 0`` (31 of the 155 questions), else to ``train``, so no held-out
question is ever asked in training, whatever ``n`` and ``seed`` are. Everything is a pure function of
its arguments (``random.Random(seed)``), so data made anywhere is the same.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from .preferences import PreferencePair

MAX_OPERAND = 9
"""Largest operand of the questions."""

SPLITS = ("train", "heldout")

ANSWER_FORMAT = "The answer is {}."
_FORMAT_RE = re.compile(r"\s*The answer is (-?\d+)\.\s*")
_QUESTION_RE = re.compile(r"What is (\d+) ([+-]) (\d+)\?")
_INT_RE = re.compile(r"-?\d+")

# wordings of a correct number in the wrong format (the rejected side of "format" pairs)
_OFF_FORMAT = ("{}", "{}.", "It is {}.", "I think it is {}", "The answer: {}", "Answer = {}", "the answer is {}",
               "The result is {}.")


def _in_heldout(a: int, op: str, b: int) -> bool:
    return (7 * a + 11 * b + 3 * (op == "-")) % 5 == 0


@lru_cache(maxsize=None)
def _pool(split: str) -> tuple[tuple[int, str, int], ...]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    want_heldout = split == "heldout"
    return tuple((a, op, b) for op in "+-" for a in range(MAX_OPERAND + 1) for b in range(MAX_OPERAND + 1)
                 if (op == "+" or a >= b) and _in_heldout(a, op, b) == want_heldout)


def _triples(split: str, n: int, seed: int) -> list[tuple[int, str, int]]:
    """``n`` operand triples of ``split``: without repetition while the pool lasts, then again."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool, rng = list(_pool(split)), random.Random(seed)
    out: list[tuple[int, str, int]] = []
    while len(out) < n:
        order = pool[:]
        rng.shuffle(order)
        out.extend(order[: n - len(out)])
    return out


def question(a: int, op: str, b: int) -> str:
    return f"What is {a} {op} {b}?"


def _messages(a: int, op: str, b: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": question(a, op, b)}]


def prompts(split: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` chat prompts (one user message each) from ``split`` ("train" or "heldout")."""
    return [_messages(*t) for t in _triples(split, n, seed)]


def answer_of(messages: list[dict]) -> int:
    """The true result of the question in the last user message; ValueError if it is not one of ours."""
    user = [m for m in messages if m.get("role") == "user"]
    match = _QUESTION_RE.fullmatch(str(user[-1].get("content", "")).strip()) if user else None
    if match is None:
        raise ValueError("the last user message is not a synthetic arithmetic question ('What is A + B?')")
    a, op, b = int(match[1]), match[2], int(match[3])
    return a + b if op == "+" else a - b


def formatted_answer(messages: list[dict]) -> str:
    """The preferred reply: ``The answer is N.`` with the true N."""
    return ANSWER_FORMAT.format(answer_of(messages))


def _stated_number(response: str) -> tuple[int | None, bool]:
    """(the number the response states, whether it is in the exact format). Unformatted: its last integer."""
    match = _FORMAT_RE.fullmatch(response)
    if match:
        return int(match[1]), True
    numbers = _INT_RE.findall(response)
    return (int(numbers[-1]) if numbers else None), False


def score_response(messages: list[dict], response: str) -> float:
    """The ground-truth reward of ``response`` to the question in ``messages`` (table in the module doc)."""
    truth = answer_of(messages)
    number, formatted = _stated_number(response)
    if number == truth:
        return 1.0 if formatted else 0.5
    return 0.25 if formatted else 0.0


def is_correct(messages: list[dict], response: str) -> bool:
    """The response states the right number (in the format or, failing it, as its last integer)."""
    return _stated_number(response)[0] == answer_of(messages)


NEAR_MISS = 2
"""A near miss is off by 1..NEAR_MISS (a model's mistake, not a guess)."""


def _wrong_number(truth: int, rng: random.Random, near_miss: float = 0.0) -> int:
    """A wrong result: with probability ``near_miss`` off by 1..:data:`NEAR_MISS` (what the nano SFT
    policy's mistakes look like: ``8 + 9`` -> 16), else drawn uniformly from 0..2*MAX_OPERAND (a guess).
    ``near_miss`` 0 draws exactly what it drew before the option existed."""
    if near_miss and rng.random() < near_miss:
        options = [truth + d for d in range(-NEAR_MISS, NEAR_MISS + 1) if d and 0 <= truth + d <= 2 * MAX_OPERAND]
        return rng.choice(options)
    while True:
        n = rng.randint(0, 2 * MAX_OPERAND)
        if n != truth:
            return n


def rejected_response(messages: list[dict], rng: random.Random, near_miss: float = 0.0) -> str:
    """A worse reply than :func:`formatted_answer`: a wrong number in the format (40 %), the right
    number off the format (40 %), or a wrong number off the format (20 %); ``near_miss`` is the
    fraction of wrong numbers that are near misses (:func:`_wrong_number`)."""
    truth = answer_of(messages)
    r = rng.random()
    if r < 0.4:
        return ANSWER_FORMAT.format(_wrong_number(truth, rng, near_miss))
    wording = rng.choice(_OFF_FORMAT)
    return wording.format(truth if r < 0.8 else _wrong_number(truth, rng, near_miss))


def preference_pairs(split: str, n: int, seed: int = 0, noise: float = 0.0,
                     near_miss: float = 0.0) -> list[PreferencePair]:
    """``n`` pairs on ``split``'s questions: chosen is :func:`formatted_answer`, rejected a worse reply
    (:func:`rejected_response`). ``noise`` is the fraction of pairs whose labels are swapped (a
    large, noisy comparison set for preference-model pretraining); ``near_miss`` the fraction of
    wrong numbers that are off by 1..2 (0: guesses only, the held-out set's rule)."""
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise is the fraction of swapped labels, in [0, 0.5); got {noise}")
    if not 0.0 <= near_miss <= 1.0:
        raise ValueError(f"near_miss is a fraction of the wrong numbers, in [0, 1]; got {near_miss}")
    rng = random.Random(f"pairs-{split}-{seed}")
    out = []
    for messages in prompts(split, n, seed):
        chosen, rejected = formatted_answer(messages), rejected_response(messages, rng, near_miss)
        if rng.random() < noise:
            chosen, rejected = rejected, chosen
        out.append(PreferencePair(messages=messages, chosen=chosen, rejected=rejected))
    return out


def sft_conversations(split: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` conversations answering ``split``'s questions in the preferred format (SFT data that
    teaches the format, e.g. before PPO)."""
    return [m + [{"role": "assistant", "content": formatted_answer(m)}] for m in prompts(split, n, seed)]


def styled_conversations(split: str, n: int, seed: int = 0, preferred: float = 0.15) -> list[list[dict[str, str]]]:
    """``n`` conversations answering ``split``'s questions with the right number in the wordings of
    many writers: the preferred format (``The answer is N.``) a share ``preferred`` of the time, else
    one of the off-format wordings of the rejected replies. SFT data as it comes: it teaches the task
    and leaves the preference to learn, the part the reward model and PPO sharpen (the demo's PPO
    stage: its metric is the share of preferred replies, :func:`score_response` = 1)."""
    if not 0.0 < preferred < 1.0:
        raise ValueError(f"preferred is the share of replies in the preferred format, in (0, 1); got {preferred}")
    rng = random.Random(f"styled-{split}-{seed}")
    out = []
    for messages in prompts(split, n, seed):
        truth = answer_of(messages)
        wording = ANSWER_FORMAT if rng.random() < preferred else rng.choice(_OFF_FORMAT)
        out.append(messages + [{"role": "assistant", "content": wording.format(truth)}])
    return out


def is_preferred(messages: list[dict], response: str) -> bool:
    """The response is exactly the preferred reply: the right number in the format (score 1)."""
    return score_response(messages, response) == 1.0
