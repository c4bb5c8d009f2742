"""The built-in math data: every worked step is true arithmetic (checked by Python's own evaluation of
the written expressions), the final line is the answer, and train and test never share a question."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from openqwen.data.synthetic_math import ARITHMETIC, CATEGORIES, math_chats, math_items, split_of
from openqwen.eval.tasks.math import extract_answer

_STEP = re.compile(r"^([-\d.()+*/^ ]+?) = ([-\d.]+)$")


def _value(expr: str) -> Fraction:
    """An arithmetic expression of the data, evaluated exactly (an independent evaluator: Python's)."""
    expr = re.sub(r"(\d+(?:\.\d+)?)", r"Fraction('\1')", expr.replace("^", "**"))
    return eval(expr, {"Fraction": Fraction, "__builtins__": {}})  # noqa: S307 - our own arithmetic only


def test_worked_steps_are_true_and_end_in_the_answer():
    items = math_items("train", 450, seed=1) + math_items("test", 180, seed=1)
    assert {it.category for it in items} == set(CATEGORIES)
    checked = 0
    for it in items:
        last = it.solution.splitlines()[-1]
        assert last == f"#### {it.answer_text}"
        assert extract_answer(it.solution) == pytest.approx(it.answer)
        if it.category in ARITHMETIC:
            q = re.fullmatch(r"What is (.+)\?", it.question).group(1)
            assert float(_value(q)) == pytest.approx(it.answer)
        for line in it.solution.splitlines():
            for part in line.split(": ")[-1:]:  # "In hundredths: 612 - 126 = 486" checks its equation
                chain = [p.strip() for p in part.split(" = ")]
                if len(chain) > 1 and all(re.fullmatch(r"[-\d.()+*/^ ]+", p) for p in chain):
                    values = {_value(p) for p in chain}
                    assert len(values) == 1, f"{it.question}: {line!r}"
                    checked += 1
    assert checked > 1000


def test_train_and_test_are_disjoint_by_construction():
    test = math_items("test", 360, seed=0)
    assert len({it.question for it in test}) == len(test)  # distinct held-out questions
    assert all(split_of(it.question) == "test" for it in test)
    train = {m["content"] for seed in (0, 1, 2) for c in math_chats(3000, seed) for m in c if m["role"] == "user"}
    assert not train & {it.question for it in test}
    # a different seed gives different questions; the same seed the same ones
    assert [it.question for it in math_items("test", 50, seed=0)] == [it.question for it in test[:50]]
    assert [it.question for it in math_items("test", 50, seed=5)] != [it.question for it in test[:50]]
    with pytest.raises(ValueError, match="split must be"):
        math_items("dev", 3)
    with pytest.raises(ValueError, match="unknown math categories"):
        math_items("train", 3, categories=["calculus"])
