"""Math benchmarks: GSM8K-shaped word problems and Math401-style arithmetic, with answer extraction.

Answers are extracted from free text in this order: a ``#### <number>`` line (GSM8K's format), the
last ``\\boxed{...}`` (MATH's format), "the answer is <number>", else the last number in the text.
Numbers compare numerically (commas, ``$`` and trailing periods ignored; simple fractions read).

Math401 (Yuan et al. 2023, used by the report for Math-Qwen-Chat) is 401 arithmetic expressions
over groups of increasing difficulty; :func:`generate_math401` builds a set of the same shape from
a seed, so it needs no file and cannot have leaked into training data by name.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

from .multiple_choice import TaskDataError

_NUM = r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+"


@dataclass
class MathProblem:
    id: str
    question: str
    answer: float
    solution: str = ""
    """A worked solution ending in ``#### answer`` (used for few-shot examples)."""
    category: str = ""
    """Math401's kind (add, sub, mul, div, exp, mixed, decimals, negatives) or ``word``; results are
    broken down by it."""


def parse_number(text: str | None) -> float | None:
    """A number from a short answer string (``1,234``, ``$5.``, ``3/4``, ``-0.5``), or None."""
    if text is None:
        return None
    m = re.search(_NUM, text.replace("$", "").replace("\\!", ""))
    if not m:
        return None
    s = m.group(0).replace(",", "").rstrip(".")
    try:
        return float(Fraction(s)) if "/" in s else float(s)
    except (ValueError, ZeroDivisionError):
        return None


def _last_boxed(text: str) -> str | None:
    i = text.rfind("\\boxed")
    if i == -1:
        return None
    j = text.find("{", i)
    if j == -1:
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            inner = text[j + 1 : k]
            frac = re.fullmatch(r"\s*\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}\s*", inner)
            return f"{frac.group(1)}/{frac.group(2)}" if frac else inner
    return None


def extract_answer(text: str) -> float | None:
    """The final numeric answer in a model's reply (see the module docstring for the order)."""
    m = re.search(r"####\s*([^\n]*)", text)
    if m and parse_number(m.group(1)) is not None:
        return parse_number(m.group(1))
    boxed = _last_boxed(text)
    if boxed is not None and parse_number(boxed) is not None:
        return parse_number(boxed)
    m = list(re.finditer(r"answer is[:\s]*\$?\s*(" + _NUM + ")", text, re.I))
    if m:
        return parse_number(m[-1].group(1))
    nums = re.findall(_NUM, text)
    return parse_number(nums[-1]) if nums else None


def is_correct(pred: float | None, gold: float, rel_tol: float = 1e-4, abs_tol: float = 1e-6) -> bool:
    return pred is not None and math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=abs_tol)


# ------------------------------------------------------------------------------------- GSM8K
def load_gsm8k(path: str | Path) -> list[MathProblem]:
    """GSM8K-shaped ``.jsonl``: ``question`` and ``answer`` (a solution ending in ``#### 42``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no task file at {path}")
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskDataError(f"{path}:{i + 1}: not valid JSON ({e}); GSM8K files hold one JSON object per line") \
                from None
        if not isinstance(r, dict) or "question" not in r or "answer" not in r:
            raise TaskDataError(f"{path}:{i + 1}: GSM8K rows need 'question' and 'answer', found "
                                f"{sorted(r) if isinstance(r, dict) else type(r).__name__}")
        m = re.search(r"####\s*(.+)", str(r["answer"]))
        gold = parse_number(m.group(1) if m else str(r["answer"]))
        if gold is None:
            raise TaskDataError(f"{path}:{i + 1}: no numeric answer in {r['answer']!r} (expected '#### 42')")
        out.append(MathProblem(str(r.get("id", i)), r["question"], gold, str(r["answer"])))
    return out


def gsm8k_base_prompt(p: MathProblem, shots: Sequence[MathProblem]) -> str:
    ex = "".join(f"Question: {s.question}\nAnswer: {s.solution.strip()}\n\n" for s in shots)
    return f"{ex}Question: {p.question}\nAnswer:"


def gsm8k_chat_messages(p: MathProblem) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{p.question}\nSolve it step by step, then write the final "
             "answer on the last line as '#### <number>'."}]


# ------------------------------------------------------------------------------------ Math401
def generate_math401(n: int = 401, seed: int = 0) -> list[MathProblem]:
    """``n`` arithmetic problems in Math401's groups (cycled): small and large integer + - *,
    division, decimals, negatives, powers, and mixed expressions with brackets."""
    rng = random.Random(seed)

    def ints(lo: int, hi: int) -> tuple[int, int]:
        return rng.randint(lo, hi), rng.randint(lo, hi)

    def group(g: int) -> str:
        if g == 0:
            a, b = ints(0, 9); return f"{a}{rng.choice('+-*')}{b}"
        if g == 1:
            a, b = ints(10, 99); return f"{a}{rng.choice('+-*')}{b}"
        if g == 2:
            a, b = ints(100, 9999); return f"{a}{rng.choice('+-')}{b}"
        if g == 3:
            a, b = ints(10**5, 10**9); return f"{a}{rng.choice('+-')}{b}"
        if g == 4:
            a, b = ints(100, 999); return f"{a}*{b}"
        if g == 5:
            b = rng.randint(2, 99); return f"{b * rng.randint(2, 999)}/{b}"
        if g == 6:
            a, b = ints(1, 999); return f"{a}/{b}"
        if g == 7:
            return f"{rng.uniform(0, 100):.2f}{rng.choice('+-*')}{rng.uniform(0, 100):.2f}"
        if g == 8:
            a, b = ints(-999, 999); return f"{a}{rng.choice('+-*')}({b})"
        if g == 9:
            return f"{rng.randint(2, 12)}^{rng.randint(2, 5)}"
        a, b, c = rng.randint(1, 99), rng.randint(1, 99), rng.randint(1, 20)
        return rng.choice([f"({a}+{b})*{c}", f"{a}*{b}-{c}", f"({a}-{b})/{c}", f"{a}+{b}*{c}"])

    out = []
    for i in range(n):
        g = i % 11
        expr = group(g)
        value = eval(expr.replace("^", "**"), {"__builtins__": {}})  # our own generated arithmetic only
        out.append(MathProblem(f"math401/{i}", f"{expr}=", float(value), category=_math401_category(g, expr)))
    return out


def _math401_category(group: int, expr: str) -> str:
    """The Math401 kind of a generated expression (its group, and for integer groups its operator)."""
    fixed = {4: "mul", 5: "div", 6: "div", 7: "decimals", 8: "negatives", 9: "exp", 10: "mixed"}
    if group in fixed:
        return fixed[group]
    return {"+": "add", "-": "sub", "*": "mul"}[next(c for c in expr[1:] if c in "+-*")]


def synthetic_math_problems(n: int, seed: int = 0, split: str = "test",
                            categories: str | None = None) -> list[MathProblem]:
    """The held-out split of the built-in math data (:mod:`openqwen.data.synthetic_math`): ``n``
    distinct questions, categories in turn, none of them in any training draw (``split="train"``:
    training questions, for few-shot examples). ``categories``: e.g. ``add,sub,mul`` (default all)."""
    from ...data.synthetic_math import math_items, parse_categories  # noqa: PLC0415

    return [MathProblem(f"synthetic-math/{split}/{i}", it.question, it.answer, it.solution, it.category)
            for i, it in enumerate(math_items(split, n, seed, parse_categories(categories)))]


def math401_chat_messages(p: MathProblem) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Calculate {p.question[:-1]}. Reply with the number only, "
             "rounded to 4 decimal places if it is not an integer."}]


def score_math(problems: Sequence[MathProblem], replies: Sequence[str], rel_tol: float) -> dict[str, Any]:
    details, correct = [], 0
    for p, r in zip(problems, replies, strict=True):
        pred = extract_answer(r)
        ok = is_correct(pred, p.answer, rel_tol=rel_tol)
        correct += ok
        details.append({"id": p.id, "category": p.category, "answer": p.answer, "prediction": pred, "correct": ok,
                        "reply": r[-500:]})
    n = len(details)
    res: dict[str, Any] = {"metrics": {"accuracy": correct / n if n else 0.0},
                           "counts": {"total": n, "correct": correct}, "details": details}
    cats = sorted({d["category"] for d in details if d["category"]})
    if cats:
        res["breakdown"] = {}
        for c in cats:
            mine = [d for d in details if d["category"] == c]
            ok = sum(d["correct"] for d in mine)
            res["breakdown"][c] = {"accuracy": ok / len(mine), "correct": ok, "total": len(mine)}
            res["metrics"][f"accuracy/{c}"] = ok / len(mine)
    return res
