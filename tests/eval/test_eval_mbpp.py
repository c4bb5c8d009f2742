"""MBPP: the 3-shot prompt of the MBPP paper / the report, on the project's own held-out Python
function tasks (MBPP's row format) or a user's file; reference solutions pass in the sandbox and
wrong ones fail."""

from __future__ import annotations

import json

import pytest

from openqwen.data.synthetic_code import code_chats, code_tasks, split_of
from openqwen.eval.sandbox import run_many
from openqwen.eval.tasks import code


def test_builtin_tasks_are_heldout_and_three_shot():
    problems = code.builtin_mbpp(shots=3)
    train = {r["text"] for r in code_tasks("train", 1000)}
    test = code_tasks("test", 1000)
    assert len(problems) == len(test) >= 40 and not train & {r["text"] for r in test}
    assert all(split_of(r["text"]) == "test" for r in test)
    assert not {c[0]["content"] for c in code_chats(500)} & {r["text"] for r in test}
    p = problems[0]
    shots = code_tasks("train", 3)
    assert p.prompt.count("[BEGIN]") == 4 and p.prompt.count("[DONE]") == 3 and p.prompt.endswith("[BEGIN]\n")
    for s in shots:  # each example: the task, its tests, the solution between the brackets
        assert f"here is your task: {s['text']}" in p.prompt and f"[BEGIN]\n{s['code'].strip()}\n[DONE]" in p.prompt
    assert test[0]["text"] in p.prompt.split("[DONE]")[-1]


def test_reference_solutions_pass_and_wrong_ones_fail(tmp_path):
    rows = code_tasks("train", 3) + code_tasks("test", 4)
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = code.load_mbpp(path, shots=3)  # a user's file in MBPP's format reads the same way
    assert [p.task_id for p in problems] == [r["task_id"] for r in rows[3:]]
    right = [code.build_program(p, r["code"] + "[DONE]\nmore text", "base") for p, r in zip(problems, rows[3:])]
    name = lambda r: r["code"].split("(")[0][4:]  # noqa: E731
    wrong = [code.build_program(p, f"def {name(r)}(*a):\n    return None\n[DONE]", "base")
             for p, r in zip(problems, rows[3:])]
    chat = [code.build_program(p, f"Here:\n```python\n{r['code']}```\nprint('demo')", "chat")
            for p, r in zip(problems, rows[3:])]
    results = run_many(right + wrong + chat, 10.0, 512, progress=False)
    assert [r.passed for r in results] == [True] * 4 + [False] * 4 + [True] * 4
