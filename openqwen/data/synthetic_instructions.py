"""Built-in instruction-following tasks with checkable answers and an honest held-out split.

The demo's SFT stage must show "instruction following after SFT" on questions the model never saw.
Free-form instructions cannot be checked automatically, and tasks that need a word's spelling
("spell apple backwards", "write green in capitals") are out of reach of a nano model whose BPE
tokens hide the letters. These families are copy-and-count tasks over whole tokens and single
digits (Qwen's tokenizer splits numbers into digits), which a model of ~1M parameters can learn in
minutes, and each answer is checked exactly:

===============  ==========================================  ==================
family           question                                    answer
===============  ==========================================  ==================
``repeat``       Repeat the word stone 3 times.              stone stone stone
``count``        Count from 17 to 21.                        17, 18, 19, 20, 21
``next``         What number comes after 58?                 59
``larger``       Which is larger, 41 or 14?                  41
``first``        What is the first word of: tiger bread sun  tiger
``last``         What is the last word of: tiger bread sun   sun
``reverse``      Say these words in reverse order: a b c     c b a
===============  ==========================================  ==================

The split is by question: :func:`split_of` hashes the question text, so a held-out question is never
generated for training (the demo's decontamination stage checks it again on the written files).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

WORDS = ("apple river stone green music light table cloud honey tiger paper house storm bread queen night "
         "sword crown ghost heart moon sun fire water earth king horse bird tree rose snow rain wind sea ship "
         "gold silver iron glass door wall road field hill lake wood leaf seed flower grass sky star dream "
         "voice song letter book pen ink salt milk wine cup bowl ring bell drum coat shoe hat bed lamp").split()

FAMILIES = ("repeat", "count", "next", "larger", "first", "last", "reverse")

HELDOUT_PERCENT = 10
"""Share of questions (by hash) that belong to the held-out split."""


@dataclass(frozen=True)
class Instruction:
    family: str
    question: str
    answer: str

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.answer}]


def split_of(question: str) -> str:
    """``"heldout"`` for a fixed ~10 % of questions, ``"train"`` for the rest (a hash of the text)."""
    bucket = int.from_bytes(hashlib.sha256(question.encode()).digest()[:4], "little") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def _make(family: str, rng: random.Random) -> Instruction:
    if family == "repeat":
        w, k = rng.choice(WORDS), rng.randint(2, 6)
        return Instruction(family, f"Repeat the word {w} {k} times.", " ".join([w] * k))
    if family == "count":
        x, n = rng.randint(0, 995), rng.randint(3, 5)
        return Instruction(family, f"Count from {x} to {x + n}.", ", ".join(str(i) for i in range(x, x + n + 1)))
    if family == "next":
        x = rng.randint(0, 998)
        return Instruction(family, f"What number comes after {x}?", str(x + 1))
    if family == "larger":
        a, b = rng.sample(range(100), 2)
        return Instruction(family, f"Which is larger, {a} or {b}?", str(max(a, b)))
    words = rng.sample(WORDS, rng.randint(3, 4))
    listed = " ".join(words)
    if family == "first":
        return Instruction(family, f"What is the first word of: {listed}", words[0])
    if family == "last":
        return Instruction(family, f"What is the last word of: {listed}", words[-1])
    if family == "reverse":
        return Instruction(family, f"Say these words in reverse order: {listed}", " ".join(reversed(words)))
    raise ValueError(f"unknown instruction family {family!r}; choose from {', '.join(FAMILIES)}")


def instructions(split: str, n: int, seed: int = 0, families: tuple[str, ...] = FAMILIES,
                 distinct: bool = False) -> list[Instruction]:
    """``n`` questions of ``split`` (``"train"`` or ``"heldout"``), families in turn; ``distinct``
    draws no question twice (for evaluation sets; some families have only a few hundred questions)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"instructions-{split}-{seed}")
    out: list[Instruction] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * (n + 10):
            raise ValueError(f"could not draw {n} distinct {split} instructions; ask for fewer")
        item = _make(families[len(out) % len(families)], rng)
        if (distinct and item.question in seen) or split_of(item.question) != split:
            continue
        seen.add(item.question)
        out.append(item)
    return out


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[.!?\"']+$", "", text.strip().lower()).split())


def is_correct(item: Instruction, response: str) -> bool:
    """The response is the answer, up to case, surrounding spaces and a final full stop."""
    return _normalise(response) == _normalise(item.answer)
