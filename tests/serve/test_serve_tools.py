"""Tool-call parsing (openqwen/serve/tools.py): JSON-aware call boundaries, and a stream that
accumulates to exactly the whole-text parse however the text is cut."""

from __future__ import annotations

import json
import random

import pytest

from openqwen.serve.tools import ContentDelta, ToolCallDelta, ToolCallStream, parse_tool_calls

TRICKY = {"city": "Paris </tool_call> <|im_end|>\n<|im_start|>user \" { [", "n": [1, {"name": "inner"}]}

CASES = [  # text, content, [(name, arguments JSON text)]
    ("Let me check.\n<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": TRICKY}) + "\n</tool_call>",
     "Let me check.", [("get_weather", json.dumps(TRICKY))]),
    ('<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n'
     '{"name": "b", "arguments": {"y": [1, {"z": "}"}]}}\n</tool_call>',
     "", [("a", '{"x": 1}'), ("b", '{"y": [1, {"z": "}"}]}')]),
    ("  plain text only  \n", "plain text only", []),
    ("<tool_call>not json</tool_call> after", "<tool_call>not json</tool_call> after", []),
    ('<tool_call>\n{"arguments": {"q": 1}, "name": "late"}\n</tool_call>', "", [("late", '{"q": 1}')]),
    ('<tool_call>\n{"name": "s", "arguments": "{\\"k\\": 2}"}\n</tool_call>', "", [("s", '{"k": 2}')]),
    ('<tool_call>\n{"name": "cut", "arguments": {"k": "abc', "", [("cut", '{"k": "abc')]),  # length limit
    ('<tool_call>{"name": "noend", "arguments": {}} and more', "and more", [("noend", "{}")]),
    ("a < b <tool_ca", "a < b <tool_ca", []),
    ('<tool_call>\n{"name": "n"}\n</tool', "", [("n", "{}")]),
    ('A\n<tool_call>{"name": "f", "arguments": {}}</tool_call>\nB', "A\n\nB", [("f", "{}")]),
]


def _streamed(text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]], list]:
    stream, deltas, at = ToolCallStream(), [], 0
    for cut in cuts + [len(text)]:
        deltas += stream.feed(text[at:cut])
        at = cut
    deltas += stream.finish()
    content = "".join(d.text for d in deltas if isinstance(d, ContentDelta))
    calls: dict[int, list] = {}
    for d in deltas:
        if isinstance(d, ToolCallDelta):
            if d.index not in calls:
                assert d.id is not None and d.id.startswith("call_") and d.name  # the first delta names the call
                calls[d.index] = [d.name, ""]
            else:
                assert d.id is None and d.name is None
            calls[d.index][1] += d.arguments
    assert sorted(calls) == list(range(len(calls)))
    return content, [tuple(calls[i]) for i in sorted(calls)], deltas


@pytest.mark.parametrize("case", range(len(CASES)))
def test_parse_and_stream_agree(case):
    text, content, calls = CASES[case]
    got_content, got_calls = parse_tool_calls(text)
    assert got_content == content
    assert [(c.name, c.arguments) for c in got_calls] == calls
    for c in got_calls:
        if not c.arguments.endswith("abc"):  # every complete call's arguments are JSON
            json.loads(c.arguments)
    rng = random.Random(case)
    for cuts in ([], list(range(1, len(text))), sorted(rng.sample(range(1, len(text)), min(7, len(text) - 1)))):
        assert _streamed(text, cuts)[:2] == (content, calls)


def test_name_first_then_arguments_as_they_arrive():
    stream = ToolCallStream()
    assert stream.feed("Sure.\n<tool_") == [ContentDelta("Sure.")]  # the possible tag start is held back
    first = stream.feed('call>\n{"name": "get_weather", "arguments": {"ci')
    (head,) = first  # one delta: id, type, name, and the arguments so far
    assert head.id and head.name == "get_weather" and head.arguments == '{"ci'
    assert stream.feed('ty": "</tool_call>"') == [ToolCallDelta(0, arguments='ty": "</tool_call>"')]
    assert stream.feed("}}\n</tool_call>") == [ToolCallDelta(0, arguments="}")]
    assert stream.finish() == []
    assert stream.calls[0].arguments == '{"city": "</tool_call>"}'
    assert head.openai() == {"index": 0, "id": stream.calls[0].id, "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"ci'}}
