"""The evaluation sets, as the texts a model could have memorised: one reader per task of
``openqwen eval``, shared by decontamination (:mod:`~openqwen.data.decontam`, which removes training
documents) and the contamination report (:mod:`openqwen.eval.contamination`, which flags evaluation
items), so both look at the same text of every item.

Each reader returns ``(item id, text)`` pairs. What goes into the text is what a leak would copy:

========== ============================================================ ======================
set        text of an item                                              default file
========== ============================================================ ======================
humaneval  prompt + canonical solution                                  the HumanEval artifact
mbpp       task text + reference code + test asserts                    none: give a file
gsm8k      question + worked answer                                     none: give a file
mmlu       question + the four choices                                  the MMLU artifact
ceval      question + the four choices (C-Eval CSV)                     none: give a file/folder
cmmlu      question + the four choices (CMMLU CSV)                      none: give a file/folder
math       the built-in math test split (question + worked solution)      generated (synthetic_math)
code       the built-in code test split (task text + code + asserts)    generated (synthetic_code)
tools      the agent's bundled tool benchmark (queries + gold calls)    package data (when present)
========== ============================================================ ======================

The prompt templates that ``openqwen eval`` wraps around items ("You are an expert Python
programmer...") are left out on purpose: they are the same in every item, so a training document
quoting a template would otherwise match all of them. ``math401`` (bare expressions such as
``12+7=``) has no item of 13 units, so an n-gram check cannot see it; it is not listed.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterator

Item = tuple[str, str]
MATH_TEST_ITEMS = 2000
MC_SETS = ("mmlu", "ceval", "cmmlu", "mc")
DEFAULT_ARTIFACT = {"humaneval": "humaneval", "mmlu": "mmlu-test"}
# the data files `openqwen eval` needs for the sets without an artifact (for the error messages)
NEEDS = {
    "mbpp": "an MBPP-shaped .jsonl (task_id, text, code, test_list)",
    "gsm8k": "a GSM8K-shaped .jsonl (question, answer)",
    "ceval": "a C-Eval CSV file or folder (id,question,A,B,C,D,answer)",
    "cmmlu": "a CMMLU CSV file or folder (Question,A,B,C,D,Answer)",
    "mc": "a .jsonl/.csv of four-way questions (question, answer_a..d)",
}


class EvalSetUnavailable(FileNotFoundError):
    """The set's data is not on this machine (an artifact not fetched, no file given, a helper
    module not installed): decontamination skips it with this message in its manifest."""


def _open(path: Path) -> io.TextIOBase:
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


def _rows(path: Path) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(location, 0-based line or row index, row) of a .jsonl / .json (a list) / .csv file, or of every
    such file in a folder. Locations are ``NAME:LINE`` (``NAME[i]`` in a JSON list), the ids
    ``openqwen eval`` gives items without an id of their own."""
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.name.removesuffix(".gz").endswith((".jsonl", ".json", ".csv")))
        if not files:
            raise ValueError(f"{path} holds no .jsonl/.json/.csv files")
        for f in files:
            yield from _rows(f)
        return
    name = path.name.removesuffix(".gz")
    with _open(path) as f:
        if name.endswith(".csv"):
            for i, row in enumerate(csv.DictReader(f)):
                yield f"{path.name}:{i + 2}", i, row
        elif name.endswith(".json"):
            data = json.load(f)
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of objects")
            for i, row in enumerate(data):
                yield f"{path.name}[{i}]", i, row
        else:
            for i, line in enumerate(f):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{i + 1}: not valid JSON ({e.msg})") from None
                    yield f"{path.name}:{i + 1}", i, row


def _get(row: dict[str, Any], *names: str) -> str:
    for n in names:
        if row.get(n) is not None:
            return str(row[n])
    return ""


def _humaneval(path: Path) -> list[Item]:
    return [(_get(r, "task_id") or loc, _get(r, "prompt") + _get(r, "canonical_solution")) for loc, _, r in _rows(path)]


def _mbpp(path: Path) -> list[Item]:
    out = []
    for loc, _, r in _rows(path):
        tests = "\n".join(map(str, r.get("test_list") or []))
        out.append((_get(r, "task_id") or loc, "\n".join(x for x in (_get(r, "text", "prompt"), _get(r, "code"), tests) if x)))
    return out


def _gsm8k(path: Path) -> list[Item]:
    return [(_get(r, "id") or str(i), _get(r, "question") + "\n" + _get(r, "answer")) for _, i, r in _rows(path)]


def _multiple_choice(path: Path) -> list[Item]:
    out = []
    for loc, _, r in _rows(path):
        q = _get(r, "question", "Question")
        choices = [_get(r, f"answer_{c.lower()}", c, c.lower()) for c in "ABCD"]
        if q.strip().lower() == "question":  # a repeated header row (the MMLU artifact has two)
            continue
        out.append((_get(r, "id") or loc, q + "\n" + "\n".join(choices)))
    return out


def _math(path: Path | None) -> list[Item]:
    try:
        from . import synthetic_math
    except ImportError as e:
        raise EvalSetUnavailable("the built-in math sets (openqwen/data/synthetic_math.py) are not installed") from e
    # the test split is disjoint from training by construction (a hash bucket of the question); this
    # checks the corpus against it: its first MATH_TEST_ITEMS questions with their worked solutions
    items = synthetic_math.math_items("test", MATH_TEST_ITEMS, seed=0)
    return [(f"{it.category}/{i}", it.question + "\n" + it.solution) for i, it in enumerate(items)]


def _code(path: Path | None) -> list[Item]:
    try:
        from . import synthetic_code
    except ImportError as e:
        raise EvalSetUnavailable("the built-in code tasks (openqwen/data/synthetic_code.py) are not installed") from e
    # the held-out function tasks of `openqwen eval --task mbpp --data builtin` (all of them)
    return [(r["task_id"], r["text"] + "\n" + r["code"] + "\n".join(r["test_list"]))
            for r in synthetic_code.code_tasks("test", 10_000, seed=0)]


def _tools(path: Path | None) -> list[Item]:
    if path is None:
        base = Path(__file__).resolve().parent.parent / "agent" / "data"
        files = sorted(base.glob("*.json*")) if base.is_dir() else []
        if not files:
            raise EvalSetUnavailable(f"no bundled tool benchmark under {base}")
    else:
        files = [path]
    out = []
    for f in files:
        for loc, _, r in _rows(f):
            # the query and whatever the gold answer is (a call, a final answer): free text around them
            parts = [_get(r, "query", "question", "prompt")]
            parts += [str(m.get("content") or "") for m in r.get("messages") or [] if isinstance(m, dict)
                      and m.get("role") == "user"]
            for key in ("answer", "gold", "expected", "final_answer", "calls"):
                if r.get(key) is not None:
                    parts.append(r[key] if isinstance(r[key], str) else json.dumps(r[key], ensure_ascii=False))
            out.append((_get(r, "id") or loc, "\n".join(p for p in parts if p)))
    return out


READERS: dict[str, Callable[[Path], list[Item]]] = {
    "humaneval": _humaneval, "mbpp": _mbpp, "gsm8k": _gsm8k,
    **{name: _multiple_choice for name in MC_SETS},
}
GENERATED: dict[str, Callable[[Path | None], list[Item]]] = {"math": _math, "code": _code, "tools": _tools}
# every set decontamination checks by default (mc is the generic multiple-choice file: give it one)
EVAL_SETS = ("humaneval", "mbpp", "gsm8k", "mmlu", "ceval", "cmmlu", "math", "code", "tools")


def eval_items(name: str, path: str | Path | None = None) -> list[Item]:
    """``(id, text)`` of every item of the evaluation set ``name``, read from ``path`` or the set's
    default (its artifact, or its generator). Raises :class:`EvalSetUnavailable` when there is no
    default and no path, ``ValueError`` for an unknown set or a malformed file."""
    from ..artifacts import artifact_path

    if name in GENERATED:
        return GENERATED[name](Path(path).expanduser() if path else None)
    if name not in READERS:
        raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(sorted(READERS) + sorted(GENERATED))} "
                         "(or pass your own files as extra)")
    if path is None:
        found = artifact_path(DEFAULT_ARTIFACT[name]) if name in DEFAULT_ARTIFACT else None
        if found is None:
            how = (f"fetch the {DEFAULT_ARTIFACT[name]!r} artifact (../shared/tools/fetch-artifacts) or "
                   if name in DEFAULT_ARTIFACT else "")
            raise EvalSetUnavailable(f"{name}: {how}give its file ({NEEDS.get(name, 'the task file')}) in "
                                     f"decontam.eval_files")
        path = found
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"evaluation file {p} for {name} does not exist")
    return READERS[name](p)
