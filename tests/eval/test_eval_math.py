"""Answer extraction (####, boxed, 'the answer is', last number), GSM8K files and seeded Math401."""

from __future__ import annotations

import json
import re

import pytest

from openqwen.eval.tasks import math as m


@pytest.mark.parametrize("text,want", [
    ("She has 3 + 4 = 7 apples.\n#### 7", 7.0),
    ("so 1,234 in total\n#### 1,234", 1234.0),
    ("The result is \\boxed{\\frac{3}{4}} and 12 more", 0.75),
    ("\\boxed{42} then 7", 42.0),
    ("first 3, then 5. The answer is $18.", 18.0),
    ("It costs 2.50 dollars, plus 10 tax, total -3.5", -3.5),
    ("no numbers here", None),
])
def test_extract_answer(text, want):
    got = m.extract_answer(text)
    assert got == (pytest.approx(want) if want is not None else None)


def test_is_correct_tolerance():
    assert m.is_correct(0.3333, 1 / 3, rel_tol=1e-3)
    assert not m.is_correct(0.33, 1 / 3, rel_tol=1e-3)
    assert not m.is_correct(None, 1.0)


def test_math401_is_seeded_and_right():
    a, b = m.generate_math401(seed=3), m.generate_math401(seed=3)
    assert len(a) == 401 and [p.question for p in a] == [p.question for p in b]
    assert [p.question for p in m.generate_math401(seed=4)] != [p.question for p in a]
    for p in a:
        expr = p.question.rstrip("=").replace("^", "**")
        assert eval(expr) == pytest.approx(p.answer)  # noqa: S307 (our own arithmetic)
    assert {"+", "-", "*", "/", "^", "("} <= set("".join(p.question for p in a))


def test_gsm8k_loader(tmp_path):
    rows = [{"question": "Tom has 2 cats and buys 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"},
            {"question": "1000 plus 234?", "answer": "#### 1,234"}]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probs = m.load_gsm8k(tmp_path / "g.jsonl")
    assert [p.answer for p in probs] == [5.0, 1234.0]
    prompt = m.gsm8k_base_prompt(probs[1], probs[:1])
    assert prompt.startswith("Question: Tom") and "#### 5\n\nQuestion: 1000 plus 234?\nAnswer:" in prompt
    score = m.score_math(probs, ["so #### 5", "it is 1233"], rel_tol=1e-4)
    assert score["metrics"]["accuracy"] == 0.5
    (tmp_path / "bad.jsonl").write_text(json.dumps({"q": 1}) + "\n")
    with pytest.raises(m.TaskDataError, match="need 'question' and 'answer'"):
        m.load_gsm8k(tmp_path / "bad.jsonl")


def test_math401_categories_follow_the_expression():
    probs = m.generate_math401(seed=3)
    cats = {p.category for p in probs}
    assert cats == {"add", "sub", "mul", "div", "exp", "mixed", "decimals", "negatives"}
    for p in probs:
        q = p.question.rstrip("=")
        if p.category == "exp":
            assert "^" in q
        elif p.category == "mixed":
            assert len([c for c in q if c in "+-*/"]) == 2
        elif p.category == "decimals":
            assert "." in q
        elif p.category == "negatives":
            assert "(" in q
        elif p.category in ("add", "sub", "mul"):
            a, b = (float(x) for x in re.split(r"[-+*/]", q))
            assert {"add": a + b, "sub": a - b, "mul": a * b}[p.category] == p.answer


def test_per_category_accuracy_counts_each_category():
    probs = [m.MathProblem(str(i), "q", float(i), category=c) for i, c in enumerate("add add sub mul mul mul".split())]
    replies = ["0", "so #### 2", "#### 2", "3", "#### 40", "the answer is 5"]  # right: items 0, 2, 3, 5
    res = m.score_math(probs, replies, 1e-4)
    assert res["counts"]["correct"] == 4
    assert res["breakdown"] == {"add": {"accuracy": 0.5, "correct": 1, "total": 2},
                                "mul": {"accuracy": 2 / 3, "correct": 2, "total": 3},
                                "sub": {"accuracy": 1.0, "correct": 1, "total": 1}}
    assert res["metrics"]["accuracy/mul"] == pytest.approx(2 / 3)


def test_synthetic_math_task_is_the_heldout_split():
    from openqwen.data.synthetic_math import split_of

    probs = m.synthetic_math_problems(90, seed=0)
    assert len({p.question for p in probs}) == 90 and all(split_of(p.question) == "test" for p in probs)
    assert all(m.extract_answer(p.solution) == pytest.approx(p.answer) for p in probs)
    assert all(split_of(p.question) == "train" for p in m.synthetic_math_problems(9, split="train"))
