"""The built-in instruction tasks: answers worked out independently, an honest held-out split."""

from __future__ import annotations

import re

from openqwen.data.synthetic_instructions import FAMILIES, instructions, is_correct, split_of
from openqwen.train.sft_data import builtin_chat_set


def _answer_from_question(q: str) -> str:
    """Each family's answer recomputed from the question text alone."""
    if m := re.fullmatch(r"Repeat the word (\w+) (\d+) times\.", q):
        return " ".join([m[1]] * int(m[2]))
    if m := re.fullmatch(r"Count from (\d+) to (\d+)\.", q):
        return ", ".join(map(str, range(int(m[1]), int(m[2]) + 1)))
    if m := re.fullmatch(r"What number comes after (\d+)\?", q):
        return str(int(m[1]) + 1)
    if m := re.fullmatch(r"Which is larger, (\d+) or (\d+)\?", q):
        return str(max(int(m[1]), int(m[2])))
    kind, words = re.fullmatch(r"(?:What is the (first|last) word of|Say these words in (reverse) order): (.*)",
                               q).group(1, 3) if "word of" in q else ("reverse", q.split(": ", 1)[1])
    w = words.split()
    return {"first": w[0], "last": w[-1], "reverse": " ".join(w[::-1])}[kind]


def test_answers_and_split():
    held = instructions("heldout", 140, distinct=True)
    train = instructions("train", 700)
    assert {i.family for i in held} == set(FAMILIES) and len({i.question for i in held}) == 140
    for item in held + train:
        assert item.answer == _answer_from_question(item.question), item
    assert all(split_of(i.question) == "heldout" for i in held)
    assert not {i.question for i in held} & {i.question for i in train}
    chats = builtin_chat_set(3000)
    assert not {i.question for i in held} & {m["content"] for c in chats for m in c}


def test_checking_is_exact_up_to_case_and_a_full_stop():
    item = next(i for i in instructions("heldout", 7, distinct=True) if i.family == "reverse")
    assert is_correct(item, item.answer.upper() + ".")
    assert is_correct(item, "  " + item.answer + " ")
    assert not is_correct(item, item.answer + " " + item.answer.split()[0])
    assert not is_correct(item, " ".join(item.answer.split()[::-1]))
