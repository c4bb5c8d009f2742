"""Function calling in the chat API: checking ``tools`` / ``tool_choice`` / tool messages, and
turning generated text into ``tool_calls``, whole or streamed.

* :func:`request_messages`: the request's messages as the chat renderers read them (assistant
  ``tool_calls``, ``tool`` results with ``tool_call_id``, the legacy ``function_call`` / ``function``
  role), or an OpenAI-style 400 naming the field to fix;
* :func:`plan_tools`: what the request asks (:class:`ToolPlan`): the tools, the choice (``none``,
  ``auto``, ``required``, a named function), the format (Qwen2.5's ``<tool_call>`` when the model's
  template knows tools, else the first generation's ReAct prompt), parallel calls, legacy shape;
* :class:`ChoiceTools`: one choice's text -> content and calls, incrementally for streaming
  (:class:`~openqwen.serve.tools.ToolCallStream`) and at the end (ReAct steps are parsed once the
  model stops at ``Observation:``).

``tool_choice: "required"`` or a named function is enforced by constrained decoding
(:func:`openqwen.infer.constrain.tool_call_constraint`), so the call is always there and its
arguments always validate against the schema. ``parallel_tool_calls: false`` keeps the first call
of a reply that made several (generation is not cut at the first ``</tool_call>``: that text may sit
inside an argument string).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..tokenizer.react import parse_react
from . import protocol as P
from .errors import APIError
from .tools import (ContentDelta, ToolCall, ToolCallDelta, ToolCallStream, bare_json_calls, may_be_bare_call,
                    new_call_id, parse_tool_calls)

_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


# ------------------------------------------------------------------------------ messages
def request_messages(req: P.ChatCompletionRequest) -> list[dict]:
    """The messages as dicts for :func:`openqwen.tokenizer.chat.chat_prompt_ids` (``developer`` is
    ``system``; legacy ``function_call`` / ``function`` messages become tool calls and results)."""
    messages: list[dict] = []
    open_calls: dict[str, str] = {}  # id -> name of calls not answered yet
    last_legacy: list[str] = []  # ids of legacy function calls, in order
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if role not in ("system", "user", "assistant", "tool", "function"):
            raise _bad(f"messages[{i}].role {m.role!r} is not supported; use system, user, assistant or tool.",
                       f"messages.{i}.role")
        try:
            text = m.text()
        except ValueError as e:
            raise APIError(400, f"messages[{i}].content: {e}.", param=f"messages.{i}.content") from None
        turn: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant":
            calls = m.tool_calls
            if m.function_call is not None:
                if calls:
                    raise _bad(f"messages[{i}] has both tool_calls and the legacy function_call; send one.",
                               f"messages.{i}.function_call")
                calls = [{"id": new_call_id(), "type": "function", "function": m.function_call}]
                last_legacy.append(calls[0]["id"])
            if calls:
                turn["tool_calls"] = [_message_call(c, i, k) for k, c in enumerate(calls)]
                open_calls.update({c["id"]: c["function"]["name"] for c in turn["tool_calls"]})
                if m.content is None:
                    turn["content"] = None
        elif role == "tool":
            call_id = m.tool_call_id or m.id
            if not call_id:
                raise APIError(400, f"messages[{i}] has role 'tool' but no tool_call_id; give the id of the "
                               "assistant tool call it answers.", param=f"messages.{i}.tool_call_id",
                               code="missing_required_parameter")
            if call_id not in open_calls:
                raise _bad(f"messages[{i}].tool_call_id {call_id!r} answers no earlier assistant tool call "
                           "(a 'tool' message must follow the assistant message whose tool_calls hold its id).",
                           f"messages.{i}.tool_call_id")
            turn["tool_call_id"] = call_id
            turn["name"] = open_calls.pop(call_id)
        elif role == "function":  # legacy result: answers the oldest legacy call still open
            waiting = [c for c in last_legacy if c in open_calls]
            if not waiting:
                raise _bad(f"messages[{i}] has role 'function' but follows no assistant function_call.",
                           f"messages.{i}.role")
            turn = {"role": "tool", "content": text, "tool_call_id": waiting[0], "name": open_calls.pop(waiting[0])}
        messages.append(turn)
    return messages


def _message_call(call: Any, i: int, k: int) -> dict:
    where = f"messages.{i}.tool_calls.{k}"
    if not isinstance(call, dict):
        raise _bad(f"messages[{i}].tool_calls[{k}] must be an object with id, type and function.", where)
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise _bad(f"messages[{i}].tool_calls[{k}].function.name must be a non-empty string.", where + ".function.name")
    arguments = function.get("arguments", "{}")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise _bad(f"messages[{i}].tool_calls[{k}].function.arguments is not valid JSON ({e.msg} at "
                       f"character {e.pos}).", where + ".function.arguments") from None
    if not isinstance(arguments, dict):
        raise _bad(f"messages[{i}].tool_calls[{k}].function.arguments must be a JSON object.",
                   where + ".function.arguments")
    call_id = call.get("id") or new_call_id()
    return {"id": str(call_id), "type": "function", "function": {"name": function["name"], "arguments": arguments}}


# ------------------------------------------------------------------------------ tools and choice
@dataclass
class ToolPlan:
    """What a request asks of function calling.

    tools: as rendered into the prompt (``{"type": "function", "function": {...}}``); choice:
    none | auto | required | named; forced: the functions a forced call may use; style: hermes
    (Qwen2.5's ``<tool_call>``) or react; legacy: answer with ``function_call`` (functions API).
    """

    tools: list[dict]
    choice: str
    forced: list[dict] = field(default_factory=list)
    style: str = "hermes"
    parallel: bool = True
    legacy: bool = False

    @property
    def parses(self) -> bool:
        """Whether replies are read for calls (not with ``tool_choice: "none"``)."""
        return self.choice != "none"


def _check_tool(tool: Any, n: int, param: str) -> dict:
    """One tool definition, checked; returns its function dict."""
    where = f"{param}[{n}]"
    function = tool.get("function") if isinstance(tool, dict) and param == "tools" else tool
    if param == "tools" and (not isinstance(tool, dict) or tool.get("type", "function") != "function"):
        raise _bad(f"{where}.type must be 'function' (the only tool type this server runs).", f"{param}.{n}.type")
    if not isinstance(function, dict):
        raise _bad(f"{where} must have a 'function' object with name, description and parameters.", f"{param}.{n}")
    prefix = f"{param}.{n}.function" if param == "tools" else f"{param}.{n}"
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _bad(f"{where}: the function name {name!r} must be 1-64 letters, digits, '_' or '-'.", prefix + ".name")
    schema = function.get("parameters")
    if schema is None:
        raise APIError(400, f"{where}: function {name!r} has no 'parameters' JSON schema; give one "
                       "(an object schema, {\"type\": \"object\", \"properties\": {}} for no arguments).",
                       param=prefix + ".parameters", code="missing_required_parameter")
    if not isinstance(schema, dict) or schema.get("type", "object") not in ("object", "dict"):
        raise _bad(f"{where}: the parameters of {name!r} must be a JSON schema of type 'object'.", prefix + ".parameters")
    try:
        import jsonschema  # noqa: PLC0415

        jsonschema.Draft202012Validator.check_schema(
            json.loads(json.dumps(schema).replace('"type": "dict"', '"type": "object"')))
    except ImportError:
        pass
    except jsonschema.SchemaError as e:
        raise _bad(f"{where}: the parameters of {name!r} are not a valid JSON schema ({e.message}).",
                   prefix + ".parameters") from None
    return function


def plan_tools(req: P.ChatCompletionRequest, template_knows_tools: bool) -> ToolPlan | None:
    """The request's function calling (None when it sends no tools), or a 400 naming the field."""
    if req.tools is not None and req.functions is not None:
        raise _bad("send tools or the legacy functions, not both.", "functions")
    legacy = req.functions is not None
    param = "functions" if legacy else "tools"
    definitions = req.functions if legacy else req.tools
    choice_value = req.function_call if legacy else req.tool_choice
    if not definitions:
        if choice_value is not None and choice_value != "none":
            raise _bad(f"'{'function_call' if legacy else 'tool_choice'}' is only allowed when "
                       f"'{param}' are specified.", "function_call" if legacy else "tool_choice")
        return None
    functions = [_check_tool(t, n, param) for n, t in enumerate(definitions)]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise _bad(f"{param}: the function name {dup!r} is given twice.", param)
    tools = [{"type": "function", "function": f} for f in functions]
    choice_param = "function_call" if legacy else "tool_choice"
    value = "auto" if choice_value is None else choice_value
    forced: list[dict] = []
    if value in ("none", "auto"):
        choice = value
    elif value == "required" and not legacy:
        choice, forced = "required", functions
    elif isinstance(value, dict):
        name = value.get("name") if legacy else (value.get("function") or {}).get("name")
        if not legacy and value.get("type", "function") != "function":
            raise _bad(f"{choice_param}.type must be 'function'.", f"{choice_param}.type")
        if name not in names:
            raise _bad(f"{choice_param} names the function {name!r}, which is not in {param} "
                       f"({', '.join(names)}).", f"{choice_param}.function.name" if not legacy else choice_param)
        choice, forced = "named", [f for f in functions if f["name"] == name]
    else:
        allowed = "'none', 'auto'" + ("" if legacy else ", 'required'")
        raise _bad(f"{choice_param} must be {allowed} or a named function, got {value!r}.", choice_param)
    return ToolPlan(tools=tools, choice=choice, forced=forced, style="hermes" if template_knows_tools else "react",
                    parallel=req.parallel_tool_calls is not False and not legacy, legacy=legacy)


# ------------------------------------------------------------------------------ replies
class ChoiceTools:
    """The content and calls of one choice's reply, fed piece by piece.

    :meth:`feed` returns the delta dicts (``{"content": ...}``, ``{"tool_calls": [...]}``) a stream
    can send now; :meth:`finish` the rest and the finish reason. ``content`` and ``calls`` hold the
    whole reply, the same whether it was streamed or not."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.calls: list[ToolCall] = []
        self.content: str | None = None
        self._stream = ToolCallStream() if plan.style == "hermes" and not plan.legacy else None
        self._text: list[str] = []
        self._names = {t["function"]["name"] for t in plan.tools}
        # the reply's start, held while it may be a bare JSON call (then it is held to the end)
        self._held: list[str] | None = [] if self._stream is not None else None

    def _deltas(self, items: list) -> list[dict]:
        out: list[dict] = []
        for d in items:
            if isinstance(d, ContentDelta):
                out.append({"content": d.text})
            elif isinstance(d, ToolCallDelta) and (self.plan.parallel or d.index == 0):
                out.append({"tool_calls": [d.openai()]})
        return out

    def feed(self, text: str) -> list[dict]:
        if self._stream is None:
            self._text.append(text)
            return []
        if self._held is not None:
            self._held.append(text)
            head = "".join(self._held).lstrip()
            if not head or may_be_bare_call(head):
                return []
            text, self._held = "".join(self._held), None
        return self._deltas(self._stream.feed(text))

    def finish(self, engine_reason: str) -> tuple[list[dict], str]:
        """The deltas still to send, and the finish reason (``tool_calls`` / ``function_call`` when the
        reply made a call and was not cut off)."""
        deltas: list[dict] = []
        bare = None
        if self._held is not None:  # the whole reply looked like JSON: bare calls, or ordinary text after all
            whole, self._held = "".join(self._held), None
            bare = bare_json_calls(whole, self._names)
            if not bare:
                deltas = self._deltas(self._stream.feed(whole))
        if bare:
            calls, content = bare, ""
            deltas = [{"tool_calls": [ToolCallDelta(k, c.arguments, c.id, c.name).openai()]}
                      for k, c in enumerate(calls) if self.plan.parallel or k == 0]
        elif self._stream is not None:
            deltas += self._deltas(self._stream.finish())
            calls, content = self._stream.calls, self._stream.content
        else:
            content, calls = self._parse("".join(self._text))
            deltas = ([{"content": content}] if content else []) + [
                {"tool_calls": [ToolCallDelta(k, c.arguments, c.id, c.name).openai()]} for k, c in enumerate(calls)]
            if self.plan.legacy:  # the legacy stream carries function_call deltas instead
                deltas = ([{"content": content}] if content else []) + [
                    {"function_call": {"name": c.name, "arguments": c.arguments}} for c in calls[:1]]
        self.calls = calls if self.plan.parallel else calls[:1]
        self.content = content or None
        if not self.calls:
            return deltas, engine_reason
        reason = engine_reason if engine_reason == "length" else ("function_call" if self.plan.legacy else "tool_calls")
        return deltas, reason

    def _parse(self, text: str) -> tuple[str, list[ToolCall]]:
        if self.plan.style == "hermes":
            bare = bare_json_calls(text, self._names)
            return ("", bare) if bare else parse_tool_calls(text)
        step = parse_react(text)
        if step.action:
            arguments = step.action_input or "{}"
            try:  # the ReAct line is JSON text already; normalise it when it parses
                arguments = json.dumps(json.loads(arguments), ensure_ascii=False)
            except json.JSONDecodeError:
                pass
            return (step.thought or ""), [ToolCall(step.action, arguments)]
        if step.final_answer is not None:
            return step.final_answer, []
        return text.strip(), []

    def message(self) -> P.ResponseMessage:
        """The whole reply as the response's message (after :meth:`finish`)."""
        if self.plan.legacy:
            call = self.calls[0] if self.calls else None
            return P.ResponseMessage(content=self.content, function_call=None if call is None else
                                     P.FunctionCall(name=call.name, arguments=call.arguments))
        tool_calls = [P.ToolCallOut(id=c.id, function=P.FunctionCall(name=c.name, arguments=c.arguments))
                      for c in self.calls] or None
        return P.ResponseMessage(content=self.content, tool_calls=tool_calls)
