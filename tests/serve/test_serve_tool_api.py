"""Function calling through the HTTP API with the official openai SDK: tools, tool_choice (forced by
constrained decoding on a random tiny model), tool messages, streaming accumulated by the SDK's own
stream helpers, the legacy functions API, and OpenAI-style 400s that name the field."""

from __future__ import annotations

import asyncio
import json

import pytest
from serve_helpers import MODEL_NAME

from openqwen.serve.stream import DONE, StreamWriter
from openqwen.serve.tool_requests import ChoiceTools, ToolPlan
from openqwen.tokenizer.chat import chat_prompt_ids

jsonschema = pytest.importorskip("jsonschema")
openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"type": "string", "enum": ["c", "f"]},
                                                    "days": {"type": "integer"}},
                   "required": ["city", "unit"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# greedy and no repetition penalty: sampling over 152K ids is the slow part of these tests
FAST = dict(temperature=0, max_tokens=100, extra_body={"repetition_penalty": 1.0})


def _valid_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_named_tool_choice_forces_a_valid_call(qwen25):
    r = qwen25.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, **FAST,
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "add"
    _valid_call(call)


def test_required_with_n_choices(qwen25):
    r = qwen25.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required",
                                       n=3, **FAST)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        _valid_call(choice.message.tool_calls[0])


def test_stream_helpers_accumulate_the_unstreamed_tool_calls(qwen25):
    """The same seeded request streamed and not: the SDK's stream helper and a hand-fed
    ChatCompletionStreamState both rebuild exactly the non-streamed tool_calls (ids aside: fresh per
    response). Arguments arrive over several chunks; the first chunk of the call carries id/type/name."""
    from openai.lib.streaming.chat import ChatCompletionStreamState

    kwargs = dict(model=MODEL_NAME, messages=ASK, tools=TOOLS, tool_choice="required", **FAST)
    whole = qwen25.chat.completions.create(**kwargs).choices[0]
    with qwen25.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion().choices[0]
    state, pieces = ChatCompletionStreamState(input_tools=TOOLS), []
    for chunk in qwen25.chat.completions.create(stream=True, **kwargs):
        state.handle_chunk(chunk)
        for choice in chunk.choices:
            pieces.extend(choice.delta.tool_calls or [])
    fed = state.get_final_completion().choices[0]

    def shape(choice):
        return [(c.type, c.function.name, c.function.arguments) for c in choice.message.tool_calls]

    assert shape(final) == shape(fed) == shape(whole)
    assert final.finish_reason == fed.finish_reason == whole.finish_reason == "tool_calls"
    assert pieces[0].index == 0 and pieces[0].id == fed.message.tool_calls[0].id and pieces[0].type == "function"
    assert pieces[0].function.name == whole.message.tool_calls[0].function.name
    assert len(pieces) > 2 and all(p.index == 0 and p.id is None and p.function.name is None for p in pieces[1:])


def test_tool_results_round_trip(qwen25, qwen25_tokenizer, template):
    """A conversation with parallel calls and their results is rendered by the model's template
    (usage counts the template's prompt), and the reply may call again."""
    calls = [{"id": "call_a", "type": "function", "function": {"name": "get_weather",
                                                                 "arguments": '{"city": "Paris", "unit": "c"}'}},
             {"id": "call_b", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": calls},
                      {"role": "tool", "tool_call_id": "call_a", "content": "21 C, clear"},
                      {"role": "tool", "tool_call_id": "call_b", "content": "3"}]
    r = qwen25.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS, tool_choice="required",
                                       **FAST)
    _valid_call(r.choices[0].message.tool_calls[0])
    expected = chat_prompt_ids(qwen25_tokenizer, [dict(m, name=n) if m["role"] == "tool" else m for m, n in zip(
        messages, [None, None, "get_weather", "add"])], 4096, tools=TOOLS, template=template)
    assert r.usage.prompt_tokens == len(expected)


def test_react_format_without_a_tool_template(client):
    """The default server (no template: ChatML) gives tools in the ReAct format; a forced call comes
    back as tool_calls all the same."""
    r = client.chat.completions.create(model=MODEL_NAME, messages=ASK, tools=TOOLS, **FAST,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    (call,) = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    _valid_call(call)


def test_legacy_functions(qwen25):
    r = qwen25.chat.completions.create(model=MODEL_NAME, messages=ASK, functions=[f["function"] for f in TOOLS],
                                       function_call={"name": "get_weather"}, **FAST)
    choice = r.choices[0]
    assert choice.finish_reason == "function_call" and choice.message.tool_calls is None
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), SCHEMAS["get_weather"])


@pytest.mark.parametrize("change, param", [
    (dict(tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice.function.name"),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools.0.function.parameters"),
    (dict(tools=[{"type": "function", "function": {"name": "bad name!", "parameters": {}}}]), "tools.0.function.name"),
    (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": 3}}}]),
     "tools.0.function.parameters"),
    (dict(tools=None, tool_choice="required"), "tool_choice"),
    (dict(tool_choice="always"), "tool_choice"),
    (dict(messages=ASK + [{"role": "tool", "content": "x"}]), "messages.1.tool_call_id"),
    (dict(messages=ASK + [{"role": "tool", "tool_call_id": "call_x", "content": "x"}]), "messages.1.tool_call_id"),
    (dict(messages=ASK + [{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "add", "arguments": "{oops"}}]}]), "messages.1.tool_calls.0.function.arguments"),
])
def test_bad_tool_requests_are_400_naming_the_field(qwen25, change, param):
    kwargs = dict(model=MODEL_NAME, messages=ASK, tools=TOOLS, max_tokens=5)
    kwargs.update(change)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(openai.BadRequestError) as e:
        qwen25.chat.completions.create(**kwargs)
    assert e.value.status_code == 400 and e.value.body["param"] == param, e.value.body


# ------------------------------------------------------------------------------ the stream, scripted
class Scripted:
    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def __len__(self) -> int:
        return 1

    async def events(self):
        from openqwen.serve.choices import ChoiceEvent

        for k, text in enumerate(self.pieces):
            last = k == len(self.pieces) - 1
            yield ChoiceEvent(0, text, k + 1, "stop" if last else None)

    def cancel(self) -> None:
        pass


PARALLEL_REPLY = ('I will look both up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": '
                  '"</tool_call> <|im_end|>", "unit": "c"}}\n</tool_call>\n<tool_call>\n'
                  '{"name": "add", "arguments": {"a": 1.5, "b": -2}}\n</tool_call>')


FENCED = '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Paris", "unit": "c"}\n}\n```'
SCRIPTS = {  # reply -> (content, [(name, arguments)]) read by the non-streamed path
    "parallel": (PARALLEL_REPLY, "I will look both up.", [
        ("get_weather", '{"city": "</tool_call> <|im_end|>", "unit": "c"}'), ("add", '{"a": 1.5, "b": -2}')]),
    # what Qwen2.5-Coder-0.5B writes under tool_choice auto: the call as a JSON block, no markers
    "fenced bare call": (FENCED, None, [("get_weather", '{"city": "Paris", "unit": "c"}')]),
    "bare list": ('[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "add", "arguments": "{\\"a\\": 3}"}]',
                  None, [("add", '{"a": 1, "b": 2}'), ("add", '{"a": 3}')]),
    "JSON, not a call": ('{"name": "nobody", "arguments": {}}', '{"name": "nobody", "arguments": {}}', []),
    "code, not JSON": ("```python\nprint(1)\n```", "```python\nprint(1)\n```", []),
}


@pytest.mark.parametrize("parallel", [True, False])
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_scripted_replies_stream_into_the_sdk_state(tokenizer, parallel, script):
    """Scripted replies cut into 3-character pieces go through the SSE writer; the SDK's
    ChatCompletionStreamState rebuilds the message the non-streamed path builds from the whole text."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    from openqwen.serve.adapter import RequestAdapter

    reply, content, calls = SCRIPTS[script]
    plan = ToolPlan(tools=TOOLS, choice="auto", parallel=parallel)
    pieces = [reply[i:i + 3] for i in range(0, len(reply), 3)]
    writer = StreamWriter(RequestAdapter(tokenizer, 256), "id-1", 1, "tiny", None, True, False, 9, plan)

    async def collect():
        return [p async for p in writer.write(Scripted(pieces))]

    sse = asyncio.run(collect())
    assert sse[-1] == DONE
    state = ChatCompletionStreamState(input_tools=TOOLS)
    for piece in sse[:-1]:
        state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(piece[6:-2])))
    streamed = state.get_final_completion().choices[0]
    reader = ChoiceTools(plan)
    reader.feed(reply)
    _, reason = reader.finish("stop")
    whole = reader.message()
    expected = calls if parallel else calls[:1]
    assert streamed.finish_reason == reason == ("tool_calls" if calls else "stop")
    assert streamed.message.content == whole.content == content
    got = [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls or []]  # ids: per parse
    assert got == [(c.function.name, c.function.arguments) for c in whole.tool_calls or []] == expected


def test_chat_template_flag(artifact, tmp_path):
    from openqwen.serve.cli import chat_template_from_flag

    gguf = str(artifact("qwen25-coder-0.5b-instruct-gguf"))
    assert chat_template_from_flag("chatml", gguf) is None
    assert chat_template_from_flag("auto", gguf).knows_tools
    assert chat_template_from_flag("auto", str(tmp_path)) is None  # a folder without a template: ChatML
    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}")
    assert chat_template_from_flag(str(tmp_path / "t.jinja"), gguf).render([{"role": "user", "content": "x"}]) == "x"
    with pytest.raises(ValueError, match="--chat-template 'nope' is not auto, chatml or an existing .jinja file"):
        chat_template_from_flag("nope", gguf)
