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
    asked = [c[0]["content"] for c in code_chats(500)]
    assert not any(f"task: {r['text']} " in a for r in test for a in asked)  # no test task in the SFT data
    # the SFT data asks a task as the chat evaluation asks it, character for character
    train_problems = code.mbpp_problems(code_tasks("train", 3), 0, "train")
    assert [c[0]["content"] for c in code_chats(3)] == [p.instruction for p in train_problems]
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


def test_code_chat_replies_continue_the_evaluations_response_prefix():
    """The chat evaluation starts the reply with EvalPlus' prefix (which opens the fence); the SFT
    replies are that prefix, the solution and the closing fence, so what the model learns to write
    after the prefix is the code, and extract_code on prefix + reply finds the solution."""
    row = code_tasks("train", 1)[0]
    reply = code_chats(1)[0][1]["content"]
    assert reply.startswith(code.CHAT_RESPONSE_PREFIX) and reply.endswith("```")
    assert code.extract_code(reply) == row["code"]


def test_builtin_humaneval_shape_runs_reference_bodies_and_rejects_wrong_ones():
    """--task humaneval --data builtin: the held-out tasks as a commented def line whose body the
    model writes; the reference body passes check() in the sandbox, a wrong body fails."""
    problems = code.builtin_humaneval()
    test = code_tasks("test", 1000)
    assert [p.task_id for p in problems] == [r["task_id"] for r in test]
    p, r = problems[0], test[0]
    assert p.prompt == f"# {r['text']}\n{r['code'].splitlines()[0]}\n" and p.entry_point in r["code"]
    right = [code.build_program(q, q.canonical_solution + "\n# next", "base") for q in problems[:5]]
    wrong = [code.build_program(q, "    return None\n", "base") for q in problems[:5]]
    assert [x.passed for x in run_many(right + wrong, 10.0, 512, progress=False)] == [True] * 5 + [False] * 5
