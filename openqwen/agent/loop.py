"""The agent loop: generate, parse tool calls, run them, feed the results back, until an answer.

One loop for both tool formats; a format (:class:`openqwen.agent.react.ReactFormat`,
:class:`openqwen.agent.fncall.FunctionCallFormat`) says how the prompt carries the tools, where
generation stops, and how calls are read from the text. The conversation is kept in OpenAI's
message form (assistant ``tool_calls``, ``tool`` results), and every prompt is rendered from it by
:func:`openqwen.tokenizer.chat.chat_prompt_ids` (the model's own template, or ChatML with the
first generation's ReAct prompt), so a transcript can be replayed through the API unchanged.

Every generation goes through the one :class:`~openqwen.infer.engine.Engine` (streamed: each piece of
text is handed to ``on_event`` as it is generated). Limits: ``max_steps`` model calls, ``max_tokens``
generated in all; the transcript (JSON lines, one event per line, written as they happen) records
the prompts' sizes, the model's text, each call and observation, and the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..serve.tools import ToolCall
from ..tokenizer.chat import chat_prompt_ids
from .tools import ToolRegistry

__all__ = ["Agent", "AgentLimits", "AgentResult", "Parsed", "ToolFormat"]

EventHandler = Callable[[str, dict], None]
"""``on_event(kind, data)``: kinds ``model`` (``text``: a streamed piece), ``call`` (``name``,
``arguments``), ``observation`` (``name``, ``content``, ``ok``), ``answer`` (``text``), ``stop``
(``reason``)."""


def _unreadable_arguments(calls: Sequence[ToolCall]) -> str | None:
    """Why a call's arguments are no JSON object (text the model cut off mid-string, say), or None.
    The conversation carries the call on to the next prompt, and the chat renderer rightly refuses
    arguments that are not JSON, so the loop answers such a call as a malformed one."""
    for c in calls:
        if isinstance(c.arguments, str):
            try:
                value = json.loads(c.arguments or "{}")
            except json.JSONDecodeError as e:
                return f"the arguments of {c.name} are not valid JSON ({e.msg} at character {e.pos})"
            if not isinstance(value, dict):
                return f"the arguments of {c.name} must be a JSON object"
    return None


@dataclass
class Parsed:
    """What one generation said: visible content (or thought), tool calls, a final answer."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    final: str | None = None
    malformed: str | None = None
    """Why the text looked like a call but could not be read as one (the model is told, and retries)."""


class ToolFormat(Protocol):
    name: str
    stop: list[str]
    keep_special_tokens: bool
    """Keep special tokens in the generated text (Qwen2.5's ``<tool_call>`` is one)."""

    def template_for(self, template: Any) -> Any: ...

    def parse(self, text: str) -> Parsed: ...


@dataclass
class AgentLimits:
    """Bounds of one run."""

    max_steps: int = 8
    """Model generations (each may call several tools) before the run stops without an answer."""
    max_tokens: int = 4096
    """Tokens generated in all the run's steps."""
    max_new_tokens: int = 512
    """Tokens per generation."""

    def validate(self) -> "AgentLimits":
        for k, v in vars(self).items():
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"agent limit {k} must be a positive integer, got {v!r}")
        return self


@dataclass
class AgentResult:
    answer: str | None
    messages: list[dict]
    steps: int
    tokens: int
    stop_reason: str
    """``answer``, ``max_steps``, ``max_tokens``, or ``length`` (one generation hit max_new_tokens)."""
    calls: list[dict] = field(default_factory=list)
    """Every call made: name, arguments (text), ok, observation."""


class Agent:
    """Answer questions with tools, over one engine.

    engine: an :class:`~openqwen.infer.engine.Engine` (or anything with ``tokenizer``, ``max_seq_len``
    and ``submit(ids, params, extra_stop_ids=...)``). tools: the registry. fmt: the tool format.
    template: the model's :class:`~openqwen.tokenizer.template.ChatTemplate` (None: ChatML).
    params: sampling (default greedy). system: a system message put first.
    """

    def __init__(self, engine: Any, tools: ToolRegistry, fmt: ToolFormat, template: Any = None,
                 limits: AgentLimits | None = None, params: Any = None, system: str | None = None,
                 on_event: EventHandler | None = None, transcript: str | Path | None = None) -> None:
        self.engine, self.tools, self.fmt = engine, tools, fmt
        self.template = fmt.template_for(template)
        self.limits = (limits or AgentLimits()).validate()
        self.params = params
        self.system = system
        self.on_event = on_event
        self.transcript = Path(transcript) if transcript else None

    # ------------------------------------------------------------------------------ events
    def _emit(self, kind: str, **data: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, data)
        if self.transcript is not None and kind != "model":
            with open(self.transcript, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": round(time.time(), 3), "event": kind, **data}, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------------------ generation
    def _generate(self, messages: list[dict], max_new: int) -> tuple[str, int, str, int]:
        from ..infer.sampling import SamplingParams  # noqa: PLC0415 - infer loads torch

        tok = self.engine.tokenizer
        window = self.engine.max_seq_len - max_new - 1
        ids = chat_prompt_ids(tok, messages, window, tools=self.tools.schemas(), template=self.template)
        base = self.params or SamplingParams(greedy=True, temperature=0.0)
        params = base.replace(max_new_tokens=max_new, stop=list(dict.fromkeys([*base.stop, *self.fmt.stop])),
                              skip_special_tokens=base.skip_special_tokens and not self.fmt.keep_special_tokens)
        handle = self.engine.submit(ids, params, extra_stop_ids=getattr(tok, "stop_ids", ()))
        pieces: list[str] = []
        final = None
        for ev in handle:
            if ev.text:
                pieces.append(ev.text)
                self._emit("model", text=ev.text)
            if ev.error is not None:
                raise ev.error
            if ev.completion is not None:
                final = ev.completion
        if final is None:
            raise RuntimeError("the engine ended a request without its completion")
        return final.text, final.completion_tokens, final.finish_reason, len(ids)

    # ------------------------------------------------------------------------------ the loop
    def run(self, question: str | Sequence[dict]) -> AgentResult:
        """Run until the model answers or a limit is hit; ``question`` is text or a conversation."""
        if isinstance(question, str):
            if not question.strip():
                raise ValueError("the question is empty")
            messages: list[dict] = [{"role": "user", "content": question}]
        else:
            messages = [dict(m) for m in question]
        if self.system and not (messages and messages[0]["role"] == "system"):
            messages.insert(0, {"role": "system", "content": self.system})
        self._emit("start", question=messages[-1].get("content"), tools=self.tools.names, format=self.fmt.name)
        lim, tokens, steps, calls = self.limits, 0, 0, []
        stop = "max_steps"
        answer: str | None = None
        while steps < lim.max_steps:
            left = lim.max_tokens - tokens
            if left <= 0:
                stop = "max_tokens"
                break
            text, n, finish, prompt_len = self._generate(messages, min(lim.max_new_tokens, left))
            steps += 1
            tokens += n
            self._emit("generation", step=steps, prompt_tokens=prompt_len, tokens=n, finish=finish, text=text)
            parsed = self.fmt.parse(text)
            unreadable = _unreadable_arguments(parsed.calls)
            if unreadable is not None:  # the history must render: such a call is malformed, not run
                parsed = Parsed(parsed.content, [], parsed.final, unreadable)
            if parsed.calls:
                messages.append({"role": "assistant", "content": parsed.content or None,
                                 "tool_calls": [c.openai() for c in parsed.calls]})
                for c in parsed.calls:
                    self._emit("call", name=c.name, arguments=c.arguments)
                    res = self.tools.call(c.name, c.arguments)
                    self._emit("observation", name=c.name, content=res.content, ok=res.ok)
                    calls.append({"name": c.name, "arguments": c.arguments, "ok": res.ok, "observation": res.content})
                    messages.append({"role": "tool", "tool_call_id": c.id, "name": c.name, "content": res.content})
                continue
            if parsed.malformed is not None and steps < lim.max_steps:
                # tell the model what went wrong, as the observation of a call that failed to parse
                messages.append({"role": "assistant", "content": text})
                messages.append({"role": "user", "content": f"Your tool call could not be read: {parsed.malformed}. "
                                                            "Write it again in the format described."})
                self._emit("observation", name=None, content=parsed.malformed, ok=False)
                continue
            answer = parsed.final if parsed.final is not None else parsed.content
            messages.append({"role": "assistant", "content": answer})
            stop = "length" if finish == "length" else "answer"
            self._emit("answer", text=answer)
            break
        self._emit("stop", reason=stop, steps=steps, tokens=tokens)
        return AgentResult(answer, messages, steps, tokens, stop, calls)
