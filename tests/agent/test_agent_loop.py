"""The agent loop over a scripted engine (the model's replies are given; the prompts, stops, tool
runs, limits and transcript are what is checked), in both formats: ReAct in ChatML, and Qwen2.5's own
template with <tool_call> (the real template read from the GGUF)."""

from __future__ import annotations

import json

import pytest

from openqwen.agent.fncall import FunctionCallFormat
from openqwen.agent.loop import Agent, AgentLimits
from openqwen.agent.react import ReactFormat
from openqwen.agent.tools import Tool, ToolRegistry, calculator_tool
from openqwen.infer.requests import Completion, StreamEvent
from openqwen.tokenizer import QwenTokenizer
from openqwen.tokenizer.template import ChatTemplate


class ScriptedEngine:
    """The Engine's submit interface; each request gets the next scripted reply, streamed in two pieces."""

    max_seq_len = 1 << 20

    def __init__(self, tokenizer, replies):
        self.tokenizer, self.replies, self.prompts, self.params = tokenizer, list(replies), [], []

    def submit(self, ids, params, extra_stop_ids=()):
        self.prompts.append(self.tokenizer.decode(ids, skip_special_tokens=False))
        self.params.append(params)
        text = self.replies.pop(0)
        n = len(self.tokenizer.encode(text))
        done = Completion(text, [], "stop", len(ids), n)
        return [StreamEvent(text[:7], []), StreamEvent(text[7:], [], finish_reason="stop", completion=done)]


@pytest.fixture(scope="module")
def tok():
    return QwenTokenizer({bytes([b]): b for b in range(256)},
                         {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})


@pytest.fixture(scope="module")
def qwen25_template(artifact):
    return ChatTemplate.from_checkpoint(artifact("qwen25-coder-0.5b-instruct-gguf"))


def registry():
    return ToolRegistry([calculator_tool(),
                         Tool("get_weather", "weather of a city", {"type": "object", "properties": {
                             "city": {"type": "string"}}, "required": ["city"]}, lambda city: f"sunny in {city}")])


def test_react_loop_runs_the_action_and_feeds_the_observation_back(tok, tmp_path):
    eng = ScriptedEngine(tok, ['Thought: I need to multiply.\nAction: calculator\nAction Input: {"expression": "17 * 23"}\n',
                               "Thought: I know the final answer.\nFinal Answer: 391"])
    streamed = []
    agent = Agent(eng, registry(), ReactFormat(), limits=AgentLimits(max_steps=4),
                  on_event=lambda k, d: streamed.append((k, d)), transcript=tmp_path / "t.jsonl")
    res = agent.run("What is 17 * 23?")
    assert (res.answer, res.stop_reason, res.steps) == ("391", "answer", 2)
    assert res.calls == [{"name": "calculator", "arguments": '{"expression": "17 * 23"}', "ok": True, "observation": "391"}]
    first, second = eng.prompts
    assert "calculator: Evaluate an arithmetic expression" in first and "Question: What is 17 * 23?" in first
    assert first.endswith("<|im_start|>assistant\n")
    # the second prompt continues the same assistant turn after the observation
    assert second.endswith('Action Input: {"expression": "17 * 23"}\nObservation: 391\n')
    assert all(p.stop == ["Observation:"] and p.greedy and p.skip_special_tokens for p in eng.params)
    assert "".join(d["text"] for k, d in streamed if k == "model") == "".join(
        ['Thought: I need to multiply.\nAction: calculator\nAction Input: {"expression": "17 * 23"}\n',
         "Thought: I know the final answer.\nFinal Answer: 391"])
    events = [json.loads(line)["event"] for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert events == ["start", "generation", "call", "observation", "generation", "answer", "stop"]


def test_bad_calls_come_back_as_observations(tok):
    eng = ScriptedEngine(tok, ['Action: weather\nAction Input: {"city": "Paris"}',
                               'Action: get_weather\nAction Input: {"town": "Paris"}',
                               'Action: get_weather\nAction Input: {"city": "Paris"}',
                               "Final Answer: sunny"])
    res = Agent(eng, registry(), ReactFormat()).run("Weather in Paris?")
    assert res.answer == "sunny" and [c["ok"] for c in res.calls] == [False, False, True]
    assert "Observation: Error: there is no tool named 'weather'; the tools are: calculator, get_weather" in eng.prompts[1]
    assert "Observation: Error: invalid arguments for get_weather at (top level): 'city' is a required property" in eng.prompts[2]
    assert eng.prompts[3].endswith("Observation: sunny in Paris\n")


def test_a_call_with_cut_off_arguments_is_answered_not_a_crash(tok):
    # the model stops inside the JSON string: the call cannot be carried into the next prompt, so the
    # model is told what is wrong and retries (this raised the chat renderer's TokenizerError before)
    eng = ScriptedEngine(tok, ['Action: calculator\nAction Input: {"expression": "3 + 4',
                               'Action: calculator\nAction Input: {"expression": "3 + 4"}',
                               "Final Answer: 7"])
    res = Agent(eng, registry(), ReactFormat()).run("What is 3 + 4?")
    assert (res.answer, res.steps) == ("7", 3) and [c["ok"] for c in res.calls] == [True]
    assert ("Your tool call could not be read: the arguments of calculator are not valid JSON "
            "(Unterminated string starting at at character 15)") in eng.prompts[1]


def test_step_and_token_limits(tok):
    call = 'Action: calculator\nAction Input: {"expression": "1 + 1"}\n'
    res = Agent(ScriptedEngine(tok, [call] * 5), registry(), ReactFormat(), limits=AgentLimits(max_steps=3)).run("loop")
    assert (res.stop_reason, res.steps, res.answer, len(res.calls)) == ("max_steps", 3, None, 3)
    n = len(tok.encode(call))
    eng = ScriptedEngine(tok, [call] * 5)
    res = Agent(eng, registry(), ReactFormat(), limits=AgentLimits(max_tokens=2 * n, max_new_tokens=n)).run("loop")
    assert (res.stop_reason, res.steps, res.tokens) == ("max_tokens", 2, 2 * n)
    assert [p.max_new_tokens for p in eng.params] == [n, n]
    with pytest.raises(ValueError, match="max_steps"):
        AgentLimits(max_steps=0).validate()


def test_function_calling_with_parallel_calls_through_qwen25s_template(tok, qwen25_template):
    eng = ScriptedEngine(tok, [
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2 ** 5"}}\n</tool_call>',
        "It is sunny in Paris, and 2 ** 5 = 32."])
    res = Agent(eng, registry(), FunctionCallFormat(), template=qwen25_template).run("Weather in Paris, and 2**5?")
    assert res.answer == "It is sunny in Paris, and 2 ** 5 = 32." and [c["name"] for c in res.calls] == ["get_weather", "calculator"]
    first, second = eng.prompts
    assert "<tools>" in first and '"name": "get_weather"' in first and "Observation:" not in first
    assert ("<tool_response>\nsunny in Paris\n</tool_response>\n<tool_response>\n32\n</tool_response>" in second)
    assert res.messages[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert [m["role"] for m in res.messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert all(p.stop == [] and not p.skip_special_tokens for p in eng.params)  # <tool_call> is a special token


def test_unreadable_tool_call_is_reported_to_the_model(tok, qwen25_template):
    eng = ScriptedEngine(tok, ['<tool_call>\n{"name": calculator}\n</tool_call>', "Sorry: 4"])
    res = Agent(eng, registry(), FunctionCallFormat(), template=qwen25_template).run("2+2?")
    assert res.answer == "Sorry: 4" and res.calls == []
    assert "Your tool call could not be read" in eng.prompts[1]


def test_function_calling_needs_a_template_that_knows_tools(tok):
    with pytest.raises(ValueError, match="use the ReAct format"):
        Agent(ScriptedEngine(tok, []), registry(), FunctionCallFormat(), template=None)


def test_function_calling_reads_a_reply_of_bare_call_objects(tok, qwen25_template):
    # what the 0.5B Qwen2.5-Coder writes: the call object without its <tool_call> tags
    eng = ScriptedEngine(tok, ['{"name": "calculator", "arguments": {"expression": "17 * 23"}}', "17 * 23 = 391."])
    res = Agent(eng, registry(), FunctionCallFormat(), template=qwen25_template).run("17*23?")
    assert res.answer == "17 * 23 = 391." and res.calls[0]["observation"] == "391"


@pytest.mark.slow
def test_real_qwen25_coder_calls_the_calculator_and_answers(artifact):
    from openqwen.infer.engine import Engine

    gguf = artifact("qwen25-coder-0.5b-instruct-gguf")
    engine = Engine.from_pretrained(gguf, max_batch_size=1, max_seq_len=2048)
    try:
        agent = Agent(engine, registry(), FunctionCallFormat(), template=ChatTemplate.from_checkpoint(gguf),
                      limits=AgentLimits(max_steps=3, max_new_tokens=96))
        res = agent.run("What is 123456789 * 987654321? Use the calculator.")
    finally:
        engine.close()
    assert res.calls and res.calls[0]["name"] == "calculator" and res.calls[0]["ok"]
    assert res.calls[0]["observation"] == str(123456789 * 987654321)
