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
LICENCE = "Generated here (seeded); Apache-2.0 with openqwen"

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
        # multiples of k as the long input: a list shared by every first_k task (range(25)) would
        # make all of them one 13-gram apart, and decontamination would rightly drop them all
        return _row(f"Write a function first_{k}(items) that returns the first {k} elements of a list.",
                    f"first_{k}", "items", f"items[:{k}]", lambda xs: xs[:k],
                    [(list(range(0, k * (k + 4), k)),), ([1, 2],), ([],)])
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


def code_documents(n: int, seed: int = 0, tasks_per_document: int = 8) -> list[dict[str, Any]]:
    """Python files made of ``n`` train-split tasks (the task as a comment, the solution, its tests),
    ``tasks_per_document`` to a file, as corpus documents (``source`` ``code_tasks``) for continued
    pretraining on code. No test task is among them (the hash split), and the data pipeline's
    decontamination stage checks it again against the ``code`` evaluation set."""
    rows = code_tasks("train", n, seed)
    docs = []
    for k in range(0, len(rows), tasks_per_document):
        parts = [f"# {r['text']}\n{r['code']}\n" + "\n".join(r["test_list"]) + "\n"
                 for r in rows[k: k + tasks_per_document]]
        docs.append({"text": "\n\n".join(parts), "source": "code_tasks", "domain": "code", "lang": "code",
                     "id": f"code_tasks/{seed}/{k // tasks_per_document}", "licence": LICENCE})
    return docs


def chat_instruction(row: dict[str, Any]) -> str:
    """The user turn of a task in chat form: MBPP's task statement with its tests, then the request
    for a code block; ``openqwen eval --task mbpp --mode chat`` asks exactly this."""
    tests = "\n".join(row["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {row['text']} "
            f"Your code should pass these tests:\n\n{tests}\n\nWrite the function in a Python code block.")


CHAT_RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and passes "
    "corresponding tests:\n```python\n"
)
"""EvalPlus' response prefix: the chat evaluation (``eval/tasks/code.py``) starts the model's reply
with it, and the code chats' replies start with it too."""


def code_chats(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Code conversations of the train split, ``n`` of them (the train split's ~220 tasks in a new
    order per pass when ``n`` is larger): the task as the user turn, as the chat evaluation asks it,
    and the reply as the evaluation starts it for the model (EvalPlus' response prefix, then the
    solution and the closing fence). A reply of a bare code block would teach the model to open a
    fence right after the evaluation's prefix has opened one: measured, 2 of 55 held-out tasks."""
    out: list[list[dict[str, str]]] = []
    while len(out) < n:
        rows = code_tasks("train", n - len(out), seed + len(out))
        out += [[{"role": "user", "content": chat_instruction(r)},
                 {"role": "assistant", "content": f"{CHAT_RESPONSE_PREFIX}{r['code']}```"}] for r in rows]
    return out


def humaneval_rows(split: str = "test", seed: int = 0) -> list[dict[str, Any]]:
    """The tasks of ``split`` in HumanEval's shape, for base models (``openqwen eval --task humaneval
    --data builtin``): the prompt is the task as a comment and the ``def`` line, as the code corpus
    writes the train split (``code_documents``), the model writes the body; ``check(candidate)``
    runs the three tests."""
    out = []
    for r in code_tasks(split, 1000, seed):
        head, body = r["code"].split("\n", 1)
        name = head[len("def "): head.index("(")]
        test = "def check(candidate):\n" + "".join(f"    {t.replace(name + '(', 'candidate(', 1)}\n"
                                                 for t in r["test_list"])
        out.append({"task_id": r["task_id"], "prompt": f"# {r['text']}\n{head}\n", "test": test,
                    "entry_point": name, "canonical_solution": body})
    return out
