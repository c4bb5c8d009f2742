"""Chat replies and base continuations become runnable programs; the program passes exactly when the
solution is right (checked in the sandbox)."""

from __future__ import annotations

import json

import pytest

from openqwen.eval.sandbox import run_many
from openqwen.eval.tasks import code


@pytest.fixture(scope="module")
def he(request):
    from openqwen.artifacts import artifact_path

    path = artifact_path("humaneval")
    if path is None:
        pytest.skip("artifact 'humaneval' not fetched")
    return {p.task_id: p for p in code.load_humaneval(path)}


def test_extract_code_prefers_the_entry_point_block():
    reply = ("Here is a helper:\n```python\ndef helper():\n    return 1\n```\nand the solution:\n"
             "```python\ndef solve(x):\n    return helper() + x\n```\nHope it helps.")
    assert code.extract_code(reply, "solve").startswith("def solve(x):")
    assert code.extract_code(reply).startswith("def helper()")
    assert code.extract_code("```\nprint(1)\n```") == "print(1)\n"
    assert code.extract_code("no fences, just code") == "no fences, just code"
    assert code.extract_code("```python\ndef f():\n    pass\n") == "def f():\n    pass\n"  # unclosed fence


def test_sanitize_keeps_the_solution_and_drops_demo_code():
    reply = ("import math\nLIMIT = 10\n\ndef f(x):\n    return helper(x) + LIMIT\n\n"
             "def helper(x):\n    return math.floor(x)\n\nresult = f(2)\nprint(result)\nassert f(1) == 0\n"
             "n = int(input())\nif __name__ == '__main__':\n    f(3)\n")
    out = code.sanitize(reply)
    assert out.startswith("import math\n\nLIMIT = 10\n\ndef f(x):") and "def helper(x):" in out
    for demo in ("result =", "print(", "assert", "input(", "__main__"):
        assert demo not in out
    # a reply cut off mid-statement keeps the part that parses
    assert code.sanitize("def f(x):\n    return x\n\nprint(f(") == "def f(x):\n    return x\n"
    assert code.sanitize("def (:") == "def (:"  # nothing parses: unchanged (it fails as it is)


def test_demo_code_does_not_fail_a_right_solution(he):
    p0 = he["HumanEval/0"]
    reply = ("```python\ndef has_close_elements(numbers, threshold):\n" + p0.canonical_solution
             + "\n# example\nprint(has_close_elements([1.0, 2.0], 0.5))\nassert has_close_elements([1.0], 1) is True\n"
             "x = input()\n```")
    programs = [code.build_program(p0, reply, "chat"), code.build_program(p0, reply, "chat", sanitize_chat=False)]
    assert [r.passed for r in run_many(programs, timeout_s=10)] == [True, False]


def test_truncate_base_at_top_level_statements():
    body = "    return x + 1\n\n\ndef other():\n    pass\n"
    assert code.truncate_base(body) == "    return x + 1\n\n"
    assert code.truncate_base("    y = 2\n    # fine, indented\n    return y\n#\n") == "    y = 2\n    # fine, indented\n    return y"


def test_chat_programs_pass_only_when_right(he):
    p0, p10 = he["HumanEval/0"], he["HumanEval/10"]  # /10 uses a helper defined in its prompt
    good0 = ("Sure! Here it is:\n```python\ndef has_close_elements(numbers, threshold):\n"
             + p0.canonical_solution + "```\nThis loops over all pairs.")
    bad0 = "```python\ndef has_close_elements(numbers, threshold):\n    return False\n```"
    body_only = p0.canonical_solution  # a reply that wrote only the body
    good10 = "```python\ndef make_palindrome(string: str) -> str:\n" + p10.canonical_solution + "```"
    prefixed = "def has_close_elements(numbers, threshold):\n" + p0.canonical_solution  # EvalPlus-style reply
    programs = [code.build_program(p0, good0, "chat"), code.build_program(p0, bad0, "chat"),
                code.build_program(p0, body_only, "chat"), code.build_program(p10, good10, "chat"),
                code.build_program(p0, prefixed, "chat")]
    results = run_many(programs, timeout_s=10, workers=4)
    assert [r.passed for r in results] == [True, False, True, True, True]


def test_mbpp_shaped_file(tmp_path):
    rows = [
        {"task_id": 1, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
         "test_list": ["assert add(1, 2) == 3"]},
        {"task_id": 2, "text": "Write a function to square a number.", "code": "def sq(x):\n    return x * x",
         "test_list": ["assert sq(3) == 9", "assert sq(-2) == 4"]},
    ]
    (tmp_path / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    probs = code.load_mbpp(tmp_path / "mbpp.jsonl", shots=1)
    assert len(probs) == 1 and "[BEGIN]\ndef add(a, b):" in probs[0].prompt and probs[0].prompt.endswith("[BEGIN]\n")
    ok = code.build_program(probs[0], "def sq(x):\n    return x ** 2\n[DONE]\nmore", "base")
    wrong = code.build_program(probs[0], "def sq(x):\n    return 2 * x\n[DONE]", "base")
    assert [r.passed for r in run_many([ok, wrong], timeout_s=10)] == [True, False]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"task_id": 1}) + "\n")
    with pytest.raises(code.TaskDataError, match="MBPP rows need"):
        code.load_mbpp(tmp_path / "bad.jsonl")
