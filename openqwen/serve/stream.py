"""The server-sent-event stream of one streamed completion, in OpenAI's wire format.

``data: {chunk}`` events: for chat a first chunk with the assistant role, then one per piece of text
(with its tokens' log-probabilities when asked for), one with the finish reason per choice, the usage
chunk when ``stream_options.include_usage`` is set, and ``data: [DONE]``. An error after the headers
are sent is reported in-band as an ``{"error": ...}`` event, as OpenAI does.

Whatever ends the stream (its end, an error, or the client going away, when the ASGI server closes
the generator) cancels the choices at once, so the engine frees their slots at its next step.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator, Protocol

from . import protocol as P
from .adapter import RequestAdapter, usage
from .choices import ChoiceEvent
from .errors import APIError
from .tool_requests import ChoiceTools, ToolPlan

log = logging.getLogger("openqwen.serve")

DONE = "data: [DONE]\n\n"


def sse(obj: P.BaseModel | dict) -> str:
    """One server-sent event carrying ``obj`` as compact JSON."""
    data = obj if isinstance(obj, dict) else obj.model_dump()
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


class EventSource(Protocol):
    """What the writer streams from (:class:`openqwen.serve.choices.Choices`)."""

    def __len__(self) -> int: ...
    def events(self) -> AsyncIterator[ChoiceEvent]: ...
    def cancel(self) -> None: ...


class StreamWriter:
    """Turns the events of one request's choices into OpenAI's SSE chunks.

    chat: chat.completion.chunk objects (else text_completion ones); prompt_tokens: for the usage chunk.
    """

    def __init__(self, adapter: RequestAdapter, response_id: str, created: int, model: str,
                 fingerprint: str | None, chat: bool, include_usage: bool, prompt_tokens: int,
                 tools: ToolPlan | None = None) -> None:
        self.adapter = adapter
        self.id, self.created, self.model, self.fingerprint = response_id, created, model, fingerprint
        self.chat, self.include_usage, self.prompt_tokens = chat, include_usage, prompt_tokens
        self.tools = tools if tools is not None and tools.parses and chat else None
        self.echo: tuple[str, Any] | None = None
        """(prompt text, its CompletionLogprobs or None): sent first in every choice (completions' echo)."""
        self.completion_tokens = 0  # so far, over every choice (the access log reads it at the end)

    def chunk(self, index: int, text: str | None, finish: str | None, role: bool = False,
              logprobs: Any = None, delta: dict | None = None) -> dict:
        """One chunk of choice ``index``: the role (chat's first chunk), a piece of text, a ``delta``
        (tool-call pieces), or the finish."""
        head = dict(id=self.id, created=self.created, model=self.model, system_fingerprint=self.fingerprint)
        if self.chat:
            if delta is None and role:  # with tools the reply may be calls only: no content until some comes
                delta = {"role": "assistant"} if self.tools is not None else {"role": "assistant", "content": ""}
            elif delta is None:
                delta = {} if text is None else {"content": text}
            data = P.ChatCompletionChunk(**head, choices=[P.ChatChunkChoice(
                index=index, delta=P.Delta(), finish_reason=finish, logprobs=logprobs)]).model_dump()
            data["choices"][0]["delta"] = delta  # only the fields this delta sets, as OpenAI sends them
        else:
            data = P.Completion(**head, choices=[P.CompletionChoice(
                index=index, text=text or "", finish_reason=finish, logprobs=logprobs)]).model_dump()
        if not self.include_usage:
            data.pop("usage", None)
        return data

    def usage_chunk(self, completion_tokens: int) -> dict:
        cls = P.ChatCompletionChunk if self.chat else P.Completion
        return cls(id=self.id, created=self.created, model=self.model, system_fingerprint=self.fingerprint,
                   choices=[], usage=usage(self.prompt_tokens, completion_tokens)).model_dump()

    def streamed_logprobs(self, ev: ChoiceEvent, offset: int) -> Any:
        """The log-probabilities of the tokens this event adds (None when not asked for or none);
        ``offset``: characters of this choice's token strings so far (completions' text_offset)."""
        if ev.new_logprobs is None or not ev.new_ids:
            return None
        if self.chat:
            lp = self.adapter.chat_logprobs(ev.new_ids, ev.new_logprobs, ev.finish_reason, ev.new_top)
            return lp if lp.content else None
        lp = self.adapter.completion_logprobs(ev.new_ids, ev.new_logprobs, ev.finish_reason, offset, ev.new_top,
                                              keep_stop=self.echo is not None)
        return lp if lp.tokens else None

    def tool_chunks(self, reader: ChoiceTools, ev: ChoiceEvent, logprobs: Any) -> list[str]:
        """The chunks of one event of a reply read for tool calls (the event's log-probs ride on its
        first chunk), and the finish chunk (``tool_calls`` when it made a call) on the last event."""
        deltas = reader.feed(ev.text) if ev.text else []
        reason = None
        if ev.finish_reason is not None:
            more, reason = reader.finish(ev.finish_reason)
            deltas += more
        if not deltas and logprobs is not None:
            deltas = [{}]
        out = [sse(self.chunk(ev.index, None, None, logprobs=logprobs if k == 0 else None, delta=d))
               for k, d in enumerate(deltas)]
        if reason is not None:
            out.append(sse(self.chunk(ev.index, None, reason)))
        return out

    async def write(self, choices: EventSource) -> AsyncIterator[str]:
        """The SSE text of the whole response; cancels ``choices`` when it ends, however it ends."""
        n = len(choices)
        tokens = [0] * n
        chars = [0] * n  # characters of token strings so far (completions' text_offset)
        try:
            if self.chat:
                for i in range(n):
                    yield sse(self.chunk(i, None, None, role=True))
            if self.echo is not None:
                text, lp = self.echo
                for i in range(n):
                    yield sse(self.chunk(i, text, None, logprobs=lp))
                    if lp is not None:
                        chars[i] = lp.text_offset[-1] + len(lp.tokens[-1])
            readers = [ChoiceTools(self.tools) for _ in range(n)] if self.tools is not None else None
            async for ev in choices.events():
                tokens[ev.index] = ev.completion_tokens
                self.completion_tokens = sum(tokens)
                logprobs = self.streamed_logprobs(ev, chars[ev.index])
                if readers is not None:  # function calling: content and tool-call deltas from the parser
                    for piece in self.tool_chunks(readers[ev.index], ev, logprobs):
                        yield piece
                    continue
                if ev.text or logprobs is not None:
                    yield sse(self.chunk(ev.index, ev.text, None, logprobs=logprobs))
                if not self.chat and logprobs is not None:  # offsets count token strings, as unstreamed
                    chars[ev.index] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                if ev.finish_reason is not None:
                    yield sse(self.chunk(ev.index, None, ev.finish_reason))
            if self.include_usage:
                yield sse(self.usage_chunk(sum(tokens)))
            yield DONE
        except APIError as e:  # e.g. the deadline: the client's to know, not a bug
            yield sse(e.body())
        except Exception as e:  # headers are gone already: report in-band, as OpenAI does
            log.exception("stream failed")
            yield sse(P.ErrorResponse(error=P.ErrorBody(message=f"{type(e).__name__}: {e}", type="server_error")))
        finally:
            choices.cancel()  # normal end, error or disconnect: the engine slots are released now
