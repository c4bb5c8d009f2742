"""Small Python function tasks with unit tests, written for the project, in MBPP's row format.

Each task asks for one short function (arithmetic on an argument, list and string operations),
with a reference solution and three ``assert`` tests: rows ``{"task_id", "text", "code",
"test_list"}``, the shape ``openqwen eval --task mbpp`` reads. Like the built-in math data, a task
is in the ``test`` split exactly when a hash of its text falls in the test bucket, so training
draws (the code-chat SFT data, the code mix) never contain a test task.

``openqwen eval --task mbpp --data builtin`` evaluates the held-out split (3-shot as the report,
the shots taken from the train split).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Callable

TEST_BUCKETS = 5

_WORDS = ["apple", "river", "stone", "green", "music", "light", "table", "cloud", "tiger", "paper"]


def split_of(text: str) -> str:
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return "test" if h % TEST_BUCKETS == 0 else "train"


def _row(text: str, name: str, args: str, body: str, fn: Callable[..., Any], inputs: list[tuple]) -> dict[str, Any]:
    code = f"def {name}({args}):\n    return {body}\n"
    tests = [f"assert {name}({', '.join(repr(a) for a in x)}) == {fn(*x)!r}" for x in inputs]
    return {"text": text, "code": code, "test_list": tests}


def _task(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(8)
    k = rng.randint(2, 39)
    if kind == 0:
        return _row(f"Write a function add_{k}(x) that returns x plus {k}.", f"add_{k}", "x", f"x + {k}",
                    lambda x: x + k, [(1,), (10,), (-3,)])
    if kind == 1:
        return _row(f"Write a function times_{k}(x) that returns x multiplied by {k}.", f"times_{k}", "x",
                    f"x * {k}", lambda x: x * k, [(2,), (0,), (-5,)])
    if kind == 2:
        return _row(f"Write a function minus_{k}(x) that returns x minus {k}.", f"minus_{k}", "x", f"x - {k}",
                    lambda x: x - k, [(20,), (0,), (k,)])
    if kind == 3:
        return _row(f"Write a function is_multiple_of_{k}(n) that returns True when n is divisible by {k}.",
                    f"is_multiple_of_{k}", "n", f"n % {k} == 0", lambda n: n % k == 0, [(k * 3,), (k + 1,), (0,)])
    if kind == 4:
        return _row(f"Write a function first_{k}(items) that returns the first {k} elements of a list.",
                    f"first_{k}", "items", f"items[:{k}]", lambda xs: xs[:k],
                    [(list(range(25)),), ([1, 2],), ([],)])
    if kind == 5:
        w = rng.choice(_WORDS)
        return _row(f"Write a function count_{w}(words) that returns how many times '{w}' is in a list of words.",
                    f"count_{w}", "words", f"words.count({w!r})", lambda ws: ws.count(w),
                    [([w, "x", w],), ([],), (["x"],)])
    if kind == 6:
        return _row(f"Write a function repeat_{k}(s) that returns the string s repeated {k} times.",
                    f"repeat_{k}", "s", f"s * {k}", lambda s: s * k, [("ab",), ("",), ("x",)])
    return _row(f"Write a function sum_plus_{k}(items) that returns the sum of a list of numbers plus {k}.",
                f"sum_plus_{k}", "items", f"sum(items) + {k}", lambda xs: sum(xs) + k, [([1, 2, 3],), ([],), ([-k],)])


def code_tasks(split: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``n`` distinct tasks of ``split`` as MBPP rows (``task_id`` ``builtin/<split>/<i>``)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"code/{split}/{seed}")
    out, seen, misses = [], set(), 0
    while len(out) < n and misses < 5000:
        row = _task(rng)
        if split_of(row["text"]) != split or row["text"] in seen:
            misses += 1
            continue
        seen.add(row["text"])
        out.append({"task_id": f"builtin/{split}/{len(out)}", **row})
    return out


def code_chats(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Code conversations of the train split (the task as the user turn, the solution in a code block)."""
    rows = code_tasks("train", n, seed)
    return [[{"role": "user", "content": r["text"]},
             {"role": "assistant", "content": f"```python\n{r['code']}```"}] for r in rows]
