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
    assert checked > 800  # (the column method writes two equations for a two-digit sum)


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


def test_column_method_builds_the_answer_from_single_digit_steps():
    # recomputed here the way it is taught: units column first, carry/borrow into the tens column
    items = math_items("train", 600, seed=2, categories=["add", "sub", "mul"])
    two_lines = 0
    for it in items:
        a, op, b = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\?", it.question).groups()
        a, b = int(a), int(b)
        steps = it.solution.splitlines()[:-1]
        if len(steps) == 1:
            assert a < 10 and (op == "*" or b < 10)
            continue
        two_lines += 1
        units, tens = (int(s.rsplit(" = ", 1)[1]) for s in steps)
        assert steps[0].startswith(f"{a % 10 + (10 if op == '-' and a % 10 < b % 10 else 0)} {op} ")
        assert str(int(it.answer)) == str(tens * 10 + units % 10)  # the tens line, then the units digit
        for s in steps:  # every operand of a step is a single digit (the carry included)
            assert all(int(x) < 10 for x in re.findall(r"\d+", s.split(" = ")[0])[1:])
    assert two_lines > 400


def test_categories_are_chosen_by_name(tmp_path):
    from openqwen.data.synthetic_math import parse_categories
    from openqwen.eval.tasks.math import synthetic_math_problems
    from openqwen.train.config import TrainConfig
    from openqwen.train.sft import load_conversations

    assert parse_categories("add+sub,mul") == ("add", "sub", "mul") and parse_categories(None) == CATEGORIES
    with pytest.raises(ValueError, match="unknown math categories.*choose from"):
        parse_categories("add+calculus")
    cfg = TrainConfig()
    cfg.sft.builtin_size = 60
    chats = load_conversations(["builtin-math:add+mul", "builtin-math-test:sub"], cfg)
    asked = [c[0]["content"] for c in chats]
    assert all(" + " in q or " * " in q for q in asked[:60]) and all(" - " in q for q in asked[60:])
    assert {p.category for p in synthetic_math_problems(30, categories="div,exp")} == {"div", "exp"}
