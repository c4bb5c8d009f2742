"""Built-in math data for Math-Qwen SFT: arithmetic of the Math401 kinds and GSM8K-style word
problems, each with a worked, step-by-step solution that ends in GSM8K's ``#### <answer>`` line.

Categories (Math401's groups, Yuan et al. 2023, as the report evaluates Math-Qwen-Chat): ``add``,
``sub``, ``mul``, ``div``, ``exp``, ``mixed`` (brackets and precedence), ``decimals``, ``negatives``;
plus ``word`` (multi-step word problems in GSM8K's style).

Train and test are disjoint by construction: a question belongs to the ``test`` split exactly when
a hash of its text falls in the test bucket (1 in :data:`TEST_BUCKETS`), so a generator drawing for
one split can never emit a question of the other, whatever the seed or the count. (The data
pipeline's decontamination stage checks it the independent way: no 13-gram or exact overlap.)

Example: ``math_items("test", 200, seed=0)`` is a held-out set of 200 distinct questions, the
categories in turn; ``math_chats(5000)`` the SFT conversations.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from fractions import Fraction

CATEGORIES = ("add", "sub", "mul", "div", "exp", "mixed", "decimals", "negatives", "word")
ARITHMETIC = CATEGORIES[:-1]
TEST_BUCKETS = 8
"""One question in this many (by hash) is a test question; the rest are training questions."""


@dataclass(frozen=True)
class MathItem:
    """One problem: the question, its worked solution (ending ``#### answer``) and the answer."""

    category: str
    question: str
    solution: str
    answer: float

    @property
    def answer_text(self) -> str:
        return fmt(self.answer)

    def messages(self) -> list[dict[str, str]]:
        """The item as a chat (user question, assistant worked solution)."""
        return [{"role": "user", "content": self.question}, {"role": "assistant", "content": self.solution}]


def fmt(x: float | Fraction | int) -> str:
    """A number as written in questions and answers: integers plain, else up to 4 decimals."""
    x = float(x)
    if x.is_integer():
        return str(int(x))
    return f"{x:.4f}".rstrip("0").rstrip(".")


def split_of(question: str) -> str:
    """``test`` or ``train``: a fixed function of the question text."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big")
    return "test" if h % TEST_BUCKETS == 0 else "train"


# ------------------------------------------------------------------------------ worked solutions
def _column(a: int, b: int, op: str) -> list[str]:
    """The written (column) method for two numbers below 100, one digit column a line, units first:
    ``47 + 38``: ``7 + 8 = 15`` then ``4 + 3 + 1 = 8`` (the carry written as a third term); ``52 - 38``:
    ``12 - 8 = 4`` (a borrow shows as the ten added) then ``5 - 3 - 1 = 1``; ``47 * 6``: ``7 * 6 = 42``
    then ``4 * 6 + 4 = 28``. Each line needs one single-digit fact and the carry of the line before,
    so a held-out question is made of steps the training data holds (a small model learns them where
    it cannot learn two-digit sums as single facts). The answer is the last line's result followed by
    the units digit of the line before."""
    (at, au), (bt, bu) = divmod(a, 10), divmod(b, 10)
    if op == "*":
        if at == 0:
            return [f"{a} * {b} = {a * b}"]
        return [f"{au} * {b} = {au * b}", f"{at} * {b} + {au * b // 10} = {at * b + au * b // 10}"]
    if at == 0 and bt == 0:
        return [f"{a} {op} {b} = {a + b if op == '+' else a - b}"]
    if op == "+":
        carry = (au + bu) // 10
        return [f"{au} + {bu} = {au + bu}", f"{at} + {bt} + {carry} = {at + bt + carry}"]
    borrow = int(au < bu)
    return [f"{au + 10 * borrow} - {bu} = {au + 10 * borrow - bu}", f"{at} - {bt} - {borrow} = {at - bt - borrow}"]


def _add(rng: random.Random) -> MathItem:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return MathItem("add", f"What is {a} + {b}?", "\n".join(_column(a, b, "+")) + f"\n#### {a + b}", a + b)


def _sub(rng: random.Random) -> MathItem:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    a, b = max(a, b), min(a, b)
    return MathItem("sub", f"What is {a} - {b}?", "\n".join(_column(a, b, "-")) + f"\n#### {a - b}", a - b)


def _mul(rng: random.Random) -> MathItem:
    a, b = rng.randint(2, 99), rng.randint(2, 9)
    return MathItem("mul", f"What is {a} * {b}?", "\n".join(_column(a, b, "*")) + f"\n#### {a * b}", a * b)


def _div(rng: random.Random) -> MathItem:
    b, q = rng.randint(2, 9), rng.randint(2, 30)
    a = b * q
    sol = f"{b} * {q} = {a}\nso {a} / {b} = {q}\n#### {q}"
    return MathItem("div", f"What is {a} / {b}?", sol, q)


def _exp(rng: random.Random) -> MathItem:
    a, n = (rng.randint(2, 20), rng.randint(2, 3)) if rng.random() < 0.7 else (rng.randint(2, 5), rng.randint(4, 6))
    steps, acc = [], a
    for _ in range(n - 1):
        steps.append(f"{acc} * {a} = {acc * a}")
        acc *= a
    sol = f"{a}^{n} = " + " * ".join([str(a)] * n) + "\n" + "\n".join(steps) + f"\n#### {acc}"
    return MathItem("exp", f"What is {a}^{n}?", sol, acc)


def _mixed(rng: random.Random) -> MathItem:
    a, b, c = rng.randint(2, 30), rng.randint(2, 30), rng.randint(2, 9)
    if rng.random() < 0.5:
        q, first, v = f"({a} + {b}) * {c}", f"{a} + {b} = {a + b}", (a + b) * c
        second = f"{a + b} * {c} = {v}"
    else:
        q, first, v = f"{a} + {b} * {c}", f"{b} * {c} = {b * c}", a + b * c
        second = f"{a} + {b * c} = {v}"
    return MathItem("mixed", f"What is {q}?", f"{first}\n{second}\n#### {v}", v)


def _decimals(rng: random.Random) -> MathItem:
    a, b = rng.randint(1, 999), rng.randint(1, 999)  # hundredths
    op = rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    v = a + b if op == "+" else a - b
    fa, fb, fv = (f"{x / 100:.2f}" for x in (a, b, v))
    sol = (f"In hundredths: {a} {op} {b} = {v}\n{v} hundredths = {fv}\n#### {fmt(Fraction(v, 100))}")
    return MathItem("decimals", f"What is {fa} {op} {fb}?", sol, v / 100)


def _negatives(rng: random.Random) -> MathItem:
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    kind = rng.randrange(3)
    if kind == 0:
        q, v = f"-{a} + {b}", b - a
        sol = f"-{a} + {b} = {b} - {a} = {v}"
    elif kind == 1:
        q, v = f"{a} - {a + b}", -b
        sol = f"{a} - {a + b} = -({a + b} - {a}) = {v}"
    else:
        c = rng.randint(2, 9)
        q, v = f"-{a} * {c}", -a * c
        sol = f"{a} * {c} = {a * c}\na negative times a positive is negative: {v}"
    return MathItem("negatives", f"What is {q}?", f"{sol}\n#### {v}", v)


_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
_THINGS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells"]


def _word(rng: random.Random) -> MathItem:
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    kind = rng.randrange(4)
    if kind == 0:
        have, bags, per = rng.randint(2, 40), rng.randint(2, 9), rng.randint(2, 12)
        got, v = bags * per, have + bags * per
        q = f"{name} has {have} {thing}. {name} buys {bags} bags with {per} {thing} in each bag. " \
            f"How many {thing} does {name} have now?"
        sol = f"{name} buys {bags} * {per} = {got} {thing}.\n{name} has {have} + {got} = {v} {thing}.\n#### {v}"
    elif kind == 1:
        have, give, friends = rng.randint(30, 99), rng.randint(2, 9), rng.randint(2, 3)
        given, v = give * friends, have - give * friends
        q = f"{name} has {have} {thing} and gives {give} {thing} to each of {friends} friends. " \
            f"How many {thing} are left?"
        sol = f"{name} gives away {give} * {friends} = {given} {thing}.\n{have} - {given} = {v} {thing} " \
              f"are left.\n#### {v}"
    elif kind == 2:
        price, n, paid = rng.randint(2, 9), rng.randint(2, 9), 0
        cost = price * n
        paid = (cost // 10 + 1) * 10
        v = paid - cost
        q = f"{name} buys {n} {thing} at {price} dollars each and pays with {paid} dollars. " \
            f"How much change does {name} get?"
        sol = f"The {thing} cost {n} * {price} = {cost} dollars.\nThe change is {paid} - {cost} = {v} " \
              f"dollars.\n#### {v}"
    else:
        per_day, days, extra = rng.randint(2, 12), rng.randint(2, 7), rng.randint(2, 20)
        made, v = per_day * days, per_day * days + extra
        q = f"{name} makes {per_day} {thing} a day for {days} days, then gets {extra} more as a gift. " \
            f"How many {thing} does {name} have?"
        sol = f"In {days} days {name} makes {per_day} * {days} = {made} {thing}.\nWith the gift: " \
              f"{made} + {extra} = {v} {thing}.\n#### {v}"
    return MathItem("word", q, sol, v)


_MAKERS = {"add": _add, "sub": _sub, "mul": _mul, "div": _div, "exp": _exp, "mixed": _mixed,
           "decimals": _decimals, "negatives": _negatives, "word": _word}


def math_items(split: str, n: int, seed: int = 0, categories: tuple[str, ...] | list[str] = CATEGORIES,
               unique: bool = True) -> list[MathItem]:
    """``n`` items of ``split`` (``train`` or ``test``), categories in turn, reproducible from ``seed``.

    ``unique``: no question twice (a test set of distinct questions); small categories (``exp`` has
    only about 50 questions in all) then stop contributing once they run out."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    bad = [c for c in categories if c not in _MAKERS]
    if bad or not categories:
        raise ValueError(f"unknown math categories {bad}; choose from {', '.join(CATEGORIES)}")
    rng = random.Random(f"{split}/{seed}")
    out: list[MathItem] = []
    seen: set[str] = set()
    misses = {c: 0 for c in categories}
    live = list(categories)
    i = 0
    while len(out) < n and live:
        cat = live[i % len(live)]
        i += 1
        item = _MAKERS[cat](rng)
        if split_of(item.question) != split or (unique and item.question in seen):
            misses[cat] += 1
            if misses[cat] > 2000:  # this category's split is exhausted
                live.remove(cat)
            continue
        misses[cat] = 0
        seen.add(item.question)
        out.append(item)
    return out


def parse_categories(text: str | None) -> tuple[str, ...]:
    """Categories named in ``text`` (``add+sub+mul`` or ``add,sub,mul``); all of them for None/empty.
    An unknown name is a ValueError that lists the choices."""
    if not text:
        return CATEGORIES
    names = tuple(c.strip() for c in text.replace("+", ",").split(",") if c.strip())
    bad = [c for c in names if c not in _MAKERS]
    if bad or not names:
        raise ValueError(f"unknown math categories {bad or [text]}; choose from {', '.join(CATEGORIES)} "
                         "(several joined by '+' or ',', e.g. add+sub+mul)")
    return names


def math_chats(n: int, seed: int = 0, categories: tuple[str, ...] | list[str] = CATEGORIES) -> list[list[dict[str, str]]]:
    """Training chats (the ``train`` split, questions may repeat) for ``openqwen sft``'s ``builtin-math``
    (``builtin-math:add+sub+mul`` names the categories)."""
    return [it.messages() for it in math_items("train", n, seed, categories, unique=False)]
