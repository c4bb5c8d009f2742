"""Real agent frameworks against our server (each skips cleanly when its package is absent): LangChain's
``ChatOpenAI.bind_tools``, openai-agents' ``Runner`` with a function tool, qwen-agent's ``Assistant``
with a custom tool. The tiny random model cannot choose tools, so each forces the call with
``tool_choice`` (constrained decoding); what is checked is that the framework receives, parses and
runs the call, and that the arguments it sees validate against the tool's schema."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
from pydantic import Field
from serve_helpers import API_KEY, MODEL_NAME

jsonschema = pytest.importorskip("jsonschema")
pytestmark = pytest.mark.slow  # three frameworks to import (~20 s together): proof runs, in make test-slow

SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
          "required": ["city", "unit"]}
GREEDY = {"temperature": 0, "max_tokens": 80}


def test_langchain_bind_tools_invoke_and_stream(qwen25_server):
    lc = pytest.importorskip("langchain_openai")
    from langchain_core.tools import tool
    from pydantic import BaseModel

    class Where(BaseModel):  # short strings: a random model would fill the 200-character default cap
        city: str = Field(max_length=8)
        unit: str = Field(max_length=10)

    @tool(args_schema=Where)
    def get_weather(city: str, unit: str) -> str:
        """Current weather in a city; unit is celsius or fahrenheit."""
        return f"21 degrees {unit} in {city}"

    chat = lc.ChatOpenAI(base_url=qwen25_server.url + "/v1", api_key=API_KEY, model=MODEL_NAME, max_retries=0,
                         extra_body={"repetition_penalty": 1.0}, **GREEDY)
    bound = chat.bind_tools([get_weather], tool_choice="get_weather")
    reply = bound.invoke("What is the weather in Oslo?")
    assert reply.tool_calls
    (call,) = reply.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    jsonschema.validate(call["args"], get_weather.args_schema.model_json_schema())
    streamed = None
    for chunk in bound.stream("What is the weather in Oslo?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(call["name"], call["args"])]  # greedy: same
    assert get_weather.invoke(call["args"]).startswith("21 degrees")


def test_openai_agents_runner_runs_the_tool(qwen25_server):
    agents = pytest.importorskip("agents")
    import openai

    agents.set_tracing_disabled(True)  # no network here: no trace export
    seen: list[dict] = []

    @agents.function_tool
    def get_weather(city: Annotated[str, Field(max_length=8)], unit: Annotated[str, Field(max_length=10)]) -> str:
        """Current weather in a city.

        Args:
            city: the city.
            unit: celsius or fahrenheit.
        """
        seen.append({"city": city, "unit": unit})
        return f"21 degrees {unit} in {city}"

    client = openai.AsyncOpenAI(base_url=qwen25_server.url + "/v1", api_key=API_KEY, max_retries=0)
    model = agents.OpenAIChatCompletionsModel(model=MODEL_NAME, openai_client=client)
    agent = agents.Agent(name="weather", instructions="Answer with the tool.", model=model, tools=[get_weather],
                         tool_use_behavior="stop_on_first_tool",
                         model_settings=agents.ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=80,
                                                             extra_body={"repetition_penalty": 1.0}))
    result = agents.Runner.run_sync(agent, "Weather in Oslo?")
    assert len(seen) == 1
    assert result.final_output == f"21 degrees {seen[0]['unit']} in {seen[0]['city']}"
    assert len(seen[0]["city"]) <= 8 and len(seen[0]["unit"]) <= 10  # the schema the SDK derived, enforced


def test_qwen_agent_assistant_calls_a_custom_tool(qwen25_server, monkeypatch):
    pytest.importorskip("qwen_agent")
    import qwen_agent.agents.fncall_agent as fncall_agent
    from qwen_agent.agents import Assistant
    from qwen_agent.tools.base import BaseTool

    calls: list[dict] = []

    class Weather(BaseTool):
        name = "get_weather"
        description = "Current weather in a city."
        parameters = SCHEMA

        def call(self, params: str, **kwargs) -> str:
            args = json.loads(params)
            calls.append(args)
            return json.dumps({"temperature": 21, "city": args.get("city")})

    # every reply is a forced call, so the agent would loop; two model calls are enough to see the
    # tool result go back to the server (as a tool message) and a second call come out
    monkeypatch.setattr(fncall_agent, "MAX_LLM_CALL_PER_RUN", 2)
    bot = Assistant(function_list=[Weather()], llm={
        "model": MODEL_NAME, "model_server": qwen25_server.url + "/v1", "api_key": API_KEY,
        "generate_cfg": {"use_raw_api": True, "tool_choice": "required", "max_retries": 0,
                         "extra_body": {"repetition_penalty": 1.0}, **GREEDY}})
    responses = []
    for responses in bot.run(messages=[{"role": "user", "content": "Weather in Oslo?"}]):
        pass
    assert len(calls) == 2
    for args in calls:
        jsonschema.validate(args, SCHEMA)
    results = [m for m in responses if m["role"] == "function"]
    assert [json.loads(m["content"])["city"] for m in results] == [a["city"] for a in calls]
