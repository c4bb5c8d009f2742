"""The tool-use metrics against hand-computed values (Rouge-L also against an independent LCS),
outputs read in both formats, parse failures apart from abstentions, the bundled benchmark's shape
(and that every gold call validates against its tool's schema), and the code-interpreter metrics
with programs run in the sandbox."""

from __future__ import annotations

import functools
import json
import random
import re

import pytest

from openqwen.eval.tasks.tools import (CodeCase, ToolCase, code_metrics, load_code_cases, load_tool_cases,
                                       normalise_arguments, rouge_l_f1, score_output, tool_metrics)

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}, "required": ["city"]}}}
CALC = {"type": "function", "function": {"name": "calculator", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}


def call(name, args):
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': args})}\n</tool_call>"


def lcs_reference(a, b):
    @functools.lru_cache(maxsize=None)
    def go(i, j):
        if i == len(a) or j == len(b):
            return 0
        return go(i + 1, j + 1) + 1 if a[i] == b[j] else max(go(i + 1, j), go(i, j + 1))
    return go(0, 0)


def test_rouge_l_equals_an_independent_lcs_computation():
    rng = random.Random(0)
    words = ["a", "b", "c", "d", "{", "}", '"', ":"]
    for _ in range(200):
        p = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        r = [rng.choice(words) for _ in range(rng.randint(1, 12))]
        lcs = lcs_reference(tuple(p), tuple(r))
        want = 0.0 if lcs == 0 else 2 * (lcs / len(p)) * (lcs / len(r)) / (lcs / len(p) + lcs / len(r))
        assert rouge_l_f1(" ".join(p), " ".join(r)) == pytest.approx(want)


def test_rouge_l_by_hand_on_json_arguments():
    pred = normalise_arguments('{"city": "Paris"}')
    gold = normalise_arguments({"unit": "celsius", "city": "Paris"})
    assert gold == '{"city": "Paris", "unit": "celsius"}'  # sorted keys
    # 9 tokens { " city " : " Paris " } all in the gold's 17, in order: P = 1, R = 9/17, F1 = 18/26
    assert rouge_l_f1(pred, gold) == pytest.approx(18 / 26)
    assert rouge_l_f1(gold, gold) == 1.0 and rouge_l_f1("{}", '{"x": 1}') == pytest.approx(4 / 9)  # 2 of 7: { " x " : 1 }
    assert normalise_arguments("not json") is None and normalise_arguments("[1]") is None


def test_scores_in_qwen25_format_by_hand():
    single = ToolCase("s", "single", [], [WEATHER, CALC], [{"name": "get_weather", "arguments": {"city": "Paris"}}])
    par = ToolCase("p", "parallel", [], [WEATHER, CALC], [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                                          {"name": "calculator", "arguments": {"expression": "2+2"}}])
    free = ToolCase("f", "no_tool", [], [WEATHER, CALC], [])
    outs = [
        (single, call("get_weather", {"city": "Paris"})),                 # right tool, exact input
        (single, call("Get_Weather", {"city": "paris"})),                 # names compare lower-cased; input differs
        (single, call("calculator", {"expression": "1"})),                # wrong tool
        (single, "It is probably sunny."),                                # abstention
        (single, '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'),  # parse failure
        (par, call("get_weather", {"city": "Oslo"}) + "\n" + call("calculator", {"expression": "2+2"})),
        (par, call("get_weather", {"city": "Oslo"})),                     # half of a parallel call
        (free, "Hello there!"),
        (free, call("get_weather", {"city": "Rome"})),                    # a false positive
    ]
    scores = [score_output(text, case, "hermes") for case, text in outs]
    assert [s.selection_correct for s in scores[:7]] == [True, True, False, False, False, True, False]
    assert [s.parse_failed for s in scores] == [False] * 4 + [True] + [False] * 4
    assert [s.attempted for s in scores] == [True, True, True, False, True, True, True, False, True]
    r_paris = rouge_l_f1('{"city": "paris"}', '{"city": "Paris"}')  # 8 of 9 tokens
    assert r_paris == pytest.approx(8 / 9)
    assert [s.rouge_l for s in scores[:7]] == pytest.approx([1.0, r_paris, 0.0, 0.0, 0.0, 1.0, 0.5])
    metrics, counts = tool_metrics(scores)
    assert counts == {"total": 9, "tool_cases": 7, "no_tool_cases": 2, "selection_correct": 3, "false_positives": 1,
                      "parse_failures": 1, "abstentions": 1, "bare_calls": 0}
    assert metrics["tool_selection_accuracy"] == pytest.approx(3 / 7)
    assert metrics["tool_input_rouge_l"] == pytest.approx((1 + r_paris + 1 + 0.5) / 7)
    assert metrics["false_positive_rate"] == 0.5
    assert metrics["tool_selection_accuracy_parallel"] == 0.5 and metrics["tool_selection_accuracy_single"] == 0.4


def test_scores_in_react_format():
    case = ToolCase("s", "single", [], [WEATHER], [{"name": "get_weather", "arguments": {"city": "Paris"}}])
    ok = score_output('Thought: weather\nAction: get_weather\nAction Input: {"city": "Paris"}', case, "react")
    bad = score_output("Thought: weather\nAction: get_weather\nAction Input: city=Paris", case, "react")
    none = score_output("Thought: I know it.\nFinal Answer: sunny", case, "react")
    assert (ok.selection_correct, ok.rouge_l, ok.parse_failed) == (True, 1.0, False)
    assert bad.parse_failed and (bad.selection_correct, bad.rouge_l) == (False, 0.0)  # unreadable scores nothing
    assert not none.attempted and not none.parse_failed
    free = ToolCase("f", "no_tool", [], [WEATHER], [])
    assert score_output("Action: get_weather\nAction Input: {}", free, "react").attempted


def test_bundled_benchmark_shape_and_gold_calls_validate():
    from jsonschema import Draft202012Validator

    cases = load_tool_cases()
    tool_cases = [c for c in cases if c.gold]
    assert len(tool_cases) >= 100 and sum(not c.gold for c in cases) >= 50
    assert sum(len(c.gold) > 1 for c in cases) >= 10
    assert len({g["name"] for c in cases for g in c.gold}) >= 10
    assert len({c.id for c in cases}) == len(cases)
    for c in cases:
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in c.tools}
        assert len(schemas) >= (4 if c.gold else 3)  # the gold tools among three distractors
        for g in c.gold:
            Draft202012Validator(schemas[g["name"]]).validate(g["arguments"])
    code = load_code_cases()
    assert len(code) >= 20 and all(isinstance(c.answer, float) for c in code)


def test_benchmark_files_are_checked_line_by_line(tmp_path):
    p = tmp_path / "cases.jsonl"
    p.write_text(json.dumps({"messages": [], "tools": [WEATHER], "gold": []}) + "\n{oops\n")
    with pytest.raises(ValueError, match=re.escape(f"{p}:2: not JSON")):
        load_tool_cases(p)
    p.write_text(json.dumps({"messages": [], "tools": [WEATHER], "gold": [{"name": "nope", "arguments": {}}]}) + "\n")
    with pytest.raises(ValueError, match="name tools the case does not offer"):
        load_tool_cases(p)
    p.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "tools": [WEATHER], "gold": []}) + "\n")
    assert load_tool_cases(p)[0].category == "no_tool"


def test_code_interpreter_metrics_run_the_code_in_the_sandbox():
    cases = [CodeCase("a", "sum 1..100", 5050.0), CodeCase("b", "2**10", 1024.0), CodeCase("c", "x", 3.0),
             CodeCase("d", "y", 4.0), CodeCase("e", "z", 6.0)]
    outputs = [call("python", {"code": "print(sum(range(1, 101)))"}),
               call("python", {"code": "2 ** 10 + 1"}),                       # runs, wrong answer
               call("python", {"code": "1 / 0"}),                             # does not run
               "The answer is 4.",                                            # no code at all
               "Here:\n```python\nx = 2 * 3\nx\n```"]                         # fenced block; last expression shown
    metrics, details = code_metrics(cases, outputs, "hermes", timeout_s=10)
    assert [d["executable"] for d in details] == [True, True, False, False, True]
    assert [d["correct"] for d in details] == [True, False, False, False, True]
    assert metrics == {"code_executable_rate": 3 / 5, "code_correctness": 2 / 5}


def test_bare_call_objects_without_tags_are_read_and_counted():
    case = ToolCase("p", "parallel", [], [WEATHER, CALC], [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                                          {"name": "calculator", "arguments": {"expression": "2+2"}}])
    text = '{"name": "get_weather", "arguments": {"city": "Oslo"}}\n{"name": "calculator", "arguments": {"expression": "2+2"}}'
    s = score_output(text, case, "hermes")
    assert (s.selection_correct, s.rouge_l, s.parse_failed) == (True, 1.0, False)
    assert tool_metrics([s])[1]["bare_calls"] == 1
    prose = score_output('I would call {"name": "get_weather", "arguments": {"city": "Oslo"}}', case, "hermes")
    assert not prose.attempted  # an object inside prose is not a call


def test_bare_call_naming_a_tool_not_offered_stays_text_as_the_server_reads_it():
    from openqwen.serve.tools import bare_json_calls

    case = ToolCase("n", "no_tool", [], [WEATHER], [])
    text = '{"name": "goodnight", "arguments": {}}'  # what the 0.5B Coder wrote to "Good night!"
    s = score_output(text, case, "hermes")
    assert not s.attempted and s.calls == [] and tool_metrics([s])[0]["false_positive_rate"] == 0.0
    assert bare_json_calls(text, {"get_weather"}) is None  # the server's reading: content, not tool_calls
    offered = score_output('{"name": "get_weather", "arguments": {"city": "Oslo"}}', case, "hermes")
    assert offered.attempted and tool_metrics([offered])[0]["false_positive_rate"] == 1.0
