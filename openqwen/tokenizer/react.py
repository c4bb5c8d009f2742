"""The first generation's tool format: ReAct prompting inside ChatML, and parsing its steps.

Models whose chat template knows no tools (the first-generation Qwen chat models, openqwen's nano
models) are given tools the way the release's API gave them: an instruction that lists each tool
as ``name: description Parameters: <JSON schema> Format the arguments as a JSON object.`` and the
format to follow, then ``Question:`` with the user's message. The model writes ``Thought:``,
``Action:`` (a tool name) and ``Action Input:`` (JSON arguments); generation stops at
:data:`REACT_STOP` (``Observation:``), the caller runs the tool, and the conversation goes on inside
the same assistant turn with ``Observation: <result>`` until the model writes ``Final Answer:``.

* :func:`react_conversation` turns an OpenAI-style conversation (``tools``, assistant
  ``tool_calls``, ``tool`` results) into plain ChatML turns plus the open assistant text the prompt
  ends with;
* :func:`parse_react` reads one generated step back (:class:`ReactStep`).

Imports nothing of the rest of the tokenizer package, so :mod:`.chat` can use it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from .vocab import TokenizerError

REACT_STOP = "Observation:"
"""Generation stops here: the observation is the tool's to write, not the model's."""

_FORMAT = """Use this format:

Question: the question to answer
Thought: think about what to do next
Action: the tool to call, one of [{names}]
Action Input: the tool's arguments, a JSON object
Observation: what the tool returned
... (Thought, Action, Action Input and Observation may repeat any number of times)
Thought: I know the final answer
Final Answer: the answer to the question

Begin!"""


def tool_function(tool: Any, n: int) -> dict:
    """The function description of tool ``n``: the ``function`` of an OpenAI tool
    (``{"type": "function", "function": {...}}``) or a bare ``{"name", ...}`` dict."""
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        tool = tool["function"]
    if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
        raise TokenizerError(f"tools[{n}] must be {{'type': 'function', 'function': {{'name': ..., "
                             f"'parameters': ...}}}}, got {tool!r:.80}")
    return tool


def react_instruction(tools: Sequence[Any]) -> str:
    """The instruction that lists ``tools`` and the ReAct format (put before the first question)."""
    functions = [tool_function(t, i) for i, t in enumerate(tools)]
    lines = []
    for f in functions:
        description = (f.get("description") or "").strip()
        schema = json.dumps(f.get("parameters") or {"type": "object", "properties": {}}, ensure_ascii=False)
        lines.append(f"{f['name']}: {description} Parameters: {schema} Format the arguments as a JSON object.")
    names = ", ".join(f["name"] for f in functions)
    return ("Answer the following question as well as you can. You have these tools:\n\n" + "\n\n".join(lines)
            + "\n\n" + _FORMAT.format(names=names))


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def react_conversation(messages: Sequence[dict], tools: Sequence[Any]) -> tuple[list[dict], str]:
    """``messages`` (checked dicts: ``role``, ``content`` text or None, assistant ``tool_calls``
    with ``function.name``/``function.arguments``, ``tool`` messages with ``tool_call_id``) as plain
    ChatML turns for the ReAct format, and the open assistant text the prompt must end with
    (``""`` unless the conversation ends with tool results the model has to go on from).

    The instruction goes before the first user message, each user message becomes ``Question: ...``,
    each call ``Thought/Action/Action Input`` followed by its result as ``Observation:``, and a
    finished assistant reply ``Final Answer:`` (unless it is already in that form)."""
    instruction = react_instruction(tools)
    turns: list[dict] = []
    open_steps: list[str] = []  # the assistant turn being built from calls and their observations
    pending: dict[str, int] = {}  # tool_call_id -> index in open_steps of the step waiting for it
    asked = False

    def close(final: str | None) -> None:
        if open_steps or final is not None:
            text = "".join(open_steps)
            if final is not None:
                text += final
            turns.append({"role": "assistant", "content": text.rstrip("\n")})
        open_steps.clear()
        pending.clear()

    for n, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "user":
            close(None)
            question = f"Question: {content}"
            turns.append({"role": "user", "content": question if asked else f"{instruction}\n\n{question}"})
            asked = True
        elif role == "assistant" and m.get("tool_calls"):
            for k, call in enumerate(m["tool_calls"]):
                function = call.get("function", call)
                thought = content.strip() if k == 0 and content.strip() else "I should call a tool."
                open_steps.append(f"Thought: {thought}\nAction: {function['name']}\n"
                                  f"Action Input: {_arguments_text(function.get('arguments', {}))}\n")
                pending[str(call.get("id", f"call_{n}_{k}"))] = len(open_steps) - 1
        elif role in ("tool", "function"):
            if not open_steps:
                raise TokenizerError(f"message {n} is a tool result that follows no assistant tool call")
            at = pending.pop(str(m.get("tool_call_id")), None)
            if at is None:  # no id (legacy function role): the oldest call still waiting
                at = pending.pop(next(iter(pending)), len(open_steps) - 1) if pending else len(open_steps) - 1
            open_steps[at] += f"{REACT_STOP} {content}\n"
        elif role == "assistant":
            final = content if "Final Answer:" in content else f"Thought: I know the final answer.\nFinal Answer: {content}"
            close(final)
        else:  # system (and anything else ChatML carries) stays as it is
            close(None)
            turns.append({"role": role, "content": content})
    tail = "".join(open_steps)
    return turns, tail


@dataclass
class ReactStep:
    """One step the model wrote: its thought, and either a tool call (``action`` + ``action_input``,
    the JSON text of the arguments) or a ``final_answer`` (None for what it did not write)."""

    thought: str | None
    action: str | None
    action_input: str | None
    final_answer: str | None


_FIELD = re.compile(r"^[ \t]*(Thought|Action Input|Action|Final Answer|Observation|Question)[ \t]*:[ \t]?", re.M)


def parse_react(text: str) -> ReactStep:
    """Read one ReAct step from generated text. The first ``Action``/``Action Input`` pair is the
    call (a model that writes two actions before an observation gets the first one run); text before
    any field counts as the thought (the prompt may end with ``Thought:`` already). A ``Final Answer``
    is taken only when no action comes before it."""
    fields: list[tuple[str, str]] = []
    marks = list(_FIELD.finditer(text))
    head = text[: marks[0].start()] if marks else text
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        fields.append((mark.group(1), text[mark.end():end].strip()))
    thought = next((v for k, v in fields if k == "Thought"), None)
    if thought is None and head.strip():
        thought = head.strip()
    action = action_input = final = None
    for i, (key, value) in enumerate(fields):
        if key == "Action":
            action = value
            action_input = next((v for k, v in fields[i + 1:i + 2] if k == "Action Input"), None)
            break
        if key == "Final Answer":
            final = value
            break
        if key == "Observation":  # a model that invents its own observation: nothing after counts
            break
    return ReactStep(thought=thought, action=action, action_input=action_input, final_answer=final)


__all__ = ["REACT_STOP", "ReactStep", "parse_react", "react_conversation", "react_instruction", "tool_function"]
