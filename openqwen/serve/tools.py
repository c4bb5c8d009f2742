"""Tool calls in generated text: Qwen2.5's ``<tool_call>`` JSON, parsed whole or as a stream.

Qwen2.5 models answer a call as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``,
several in a row for parallel calls. :class:`ToolCallStream` reads that text as it is generated
and turns it into OpenAI's deltas: content pieces, and per call a first delta with ``index``, ``id``
and the function name, then the arguments' JSON text piece by piece as it arrives.

The call's end is found by reading the JSON object itself (strings, escapes, nesting), not by
looking for ``</tool_call>``: a ``</tool_call>``, a ``<tool_call>`` or ChatML text inside an argument
string never cuts or opens a call, and a closing tag the model forgets does not lose the call.
:func:`parse_tool_calls` runs the same stream over a whole text, so a streamed response accumulates
to exactly the non-streamed one.

Rules (the same for both paths): text outside calls is content, with leading whitespace dropped and
whitespace before a call or at the end held back (so ``"Let me check.\\n<tool_call>..."`` has the
content ``"Let me check."``); a call whose body is not a JSON object with a string ``name`` stays
content, as written; ``arguments`` is the raw JSON text of the arguments object (a string value is
taken as the JSON text it holds, a missing one is ``{}``); a call cut off by the length limit keeps
the arguments generated so far once its name was sent.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


def new_call_id() -> str:
    """A fresh tool-call id in OpenAI's style (``call_`` + 24 hex digits)."""
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    """One complete call: the function's ``name``, its ``arguments`` as JSON text, and its ``id``."""

    name: str
    arguments: str
    id: str = field(default_factory=new_call_id)

    def openai(self) -> dict:
        """The call in OpenAI's message form (``tool_calls`` items)."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ContentDelta:
    text: str


@dataclass
class ToolCallDelta:
    """A piece of call ``index``: the first piece carries ``id`` and ``name``, later ones only
    ``arguments`` text to append."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def openai(self) -> dict:
        """As a ``delta.tool_calls`` item of a chat.completion.chunk."""
        out: dict = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        function: dict = {}
        if self.name is not None:
            function["name"] = self.name
        if self.arguments or self.name is not None:
            function["arguments"] = self.arguments
        out["function"] = function
        return out


class _ObjectScanner:
    """Reads one JSON object character by character and notes where its top-level ``name`` value
    and ``arguments`` value are, without decoding anything else."""

    def __init__(self) -> None:
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.expect = "key"  # at depth 1: key, colon, value, primitive, comma
        self.raw = ""  # the current depth-1 string (a key or a string value), still JSON-escaped
        self.key: str | None = None
        self.value_start = -1
        self.name: str | None = None
        self.args_start = -1  # where the arguments value starts in the body
        self.args_end = -1
        self.args_kind = ""  # "container" | "string" | "primitive"
        self.end = -1  # index just past the closing brace
        self.failed = False

    def _value_done(self, end: int, string_value: str | None = None) -> None:
        if self.key == "name" and string_value is not None and self.name is None:
            self.name = string_value
        if self.key == "arguments" and self.args_start >= 0 and self.args_end < 0:
            self.args_end = end
        self.expect = "comma"

    def push(self, body: str, i: int) -> None:
        """Take character ``body[i]``."""
        c = body[i]
        if self.in_string:
            if self.escape:
                self.escape = False
            elif c == "\\":
                self.escape = True
            elif c == '"':
                self.in_string = False
                if self.depth == 1:
                    try:
                        text = json.loads('"' + self.raw + '"')
                    except json.JSONDecodeError:
                        self.failed = True
                        return
                    if self.expect == "key":
                        self.key, self.expect = text, "colon"
                    elif self.expect == "value":
                        self._value_done(i + 1, text)
                return
            if self.depth == 1:
                self.raw += c
            return
        if self.depth == 0:
            if c == "{":
                self.depth, self.expect = 1, "key"
            elif not c.isspace():
                self.failed = True
            return
        if self.depth == 1 and self.expect == "primitive" and (c in ",}" or c.isspace()):
            self._value_done(i)
        if c == '"':
            self.in_string, self.raw = True, ""
            if self.depth == 1 and self.expect == "value":
                self._start_value(i, "string")
        elif c in "{[":
            if self.depth == 1 and self.expect == "value":
                self._start_value(i, "container")
            self.depth += 1
        elif c in "}]":
            self.depth -= 1
            if self.depth == 1:
                self._value_done(i + 1)
            elif self.depth == 0:
                self.end = i + 1
        elif self.depth == 1:
            if c == ":" and self.expect == "colon":
                self.expect = "value"
            elif c == ",":
                self.expect = "key"
            elif not c.isspace() and self.expect == "value":
                self._start_value(i, "primitive")
                self.expect = "primitive"

    def _start_value(self, i: int, kind: str) -> None:
        self.value_start = i
        if self.key == "arguments" and self.args_start < 0:
            self.args_start, self.args_kind = i, kind


class ToolCallStream:
    """Incremental parser: :meth:`feed` generated text, :meth:`finish` at the end; each returns the
    :class:`ContentDelta` s and :class:`ToolCallDelta` s that became certain. :attr:`calls` holds the
    calls found (complete, or cut off after their name was sent), :attr:`content` all content."""

    def __init__(self, start: str = TOOL_CALL_START, end: str = TOOL_CALL_END) -> None:
        self.start_tag, self.end_tag = start, end
        self.calls: list[ToolCall] = []
        self.content = ""
        self._held = ""  # outside a call: text that may begin a start tag, or held whitespace
        self._started = False  # content has begun (leading whitespace is dropped)
        self._pending_ws = ""  # whitespace between content pieces, sent only if more content follows
        self._body: str | None = None  # inside a call: its text after the start tag
        self._scan: _ObjectScanner | None = None
        self._sent_header = False
        self._sent_args = 0  # characters of the arguments value sent so far
        self._after = ""  # text after a complete object, checked for the end tag

    # ------------------------------------------------------------------------------ content
    def _outside(self, out: list, final: bool) -> None:
        while self._body is None and self._held:
            at = self._held.find(self.start_tag)
            if at >= 0:
                self._flush_text(self._held[:at], out)
                self._held = self._held[at + len(self.start_tag):]
                self._open_call()
                continue
            # hold back a suffix that could still become the start tag, and trailing whitespace
            keep = _partial_suffix(self._held, self.start_tag)
            visible = self._held[: len(self._held) - keep]
            ws = len(visible) - len(visible.rstrip())
            if final:
                self._flush_text(self._held.rstrip(), out)
                self._held = ""
            else:
                self._flush_text(visible[: len(visible) - ws], out)
                self._held = self._held[len(visible) - ws:]
            break

    def _flush_text(self, text: str, out: list) -> None:
        """Content that is certain; its trailing whitespace waits until more content follows."""
        if not self._started:
            text = text.lstrip()
        body = text.rstrip()
        if body:
            self._started = True
            piece, self._pending_ws = self._pending_ws + body, text[len(body):]
            out.append(ContentDelta(piece))
            self.content += piece
        elif self._started:
            self._pending_ws += text

    # ------------------------------------------------------------------------------ calls
    def _open_call(self) -> None:
        self._body, self._scan = "", _ObjectScanner()
        self._sent_header, self._sent_args, self._after = False, 0, ""
        self._call_id = new_call_id()

    def _inside(self, text: str, out: list) -> str:
        """Feed ``text`` to the open call; returns what follows the call (to parse as outside text)."""
        scan = self._scan
        assert scan is not None and self._body is not None
        rest = ""
        for k, c in enumerate(text):
            if scan.end >= 0:
                rest = text[k:]
                break
            self._body += c
            scan.push(self._body, len(self._body) - 1)
            if scan.failed:
                rest = text[k + 1:]
                break
        self._stream_call(out)
        if scan.failed:
            self._abandon(out)
            return rest
        if scan.end >= 0:
            self._after += rest
            return self._close_after(out)
        return ""

    def _stream_call(self, out: list) -> None:
        scan, body = self._scan, self._body
        if scan.name is None:
            return
        index = len(self.calls)
        if not self._sent_header:
            out.append(ToolCallDelta(index, id=self._call_id, name=scan.name))
            self._sent_header = True
        if scan.args_start < 0 or scan.args_kind != "container":
            return  # strings and primitives are sent whole when the object ends
        stop = scan.args_end if scan.args_end >= 0 else len(body)
        piece = body[scan.args_start + self._sent_args: stop]
        if piece:
            self._sent_args += len(piece)
            out.append(ToolCallDelta(index, arguments=piece))

    def _arguments_whole(self) -> str:
        scan, body = self._scan, self._body
        if scan.args_start < 0:
            return "{}"
        raw = body[scan.args_start: scan.args_end if scan.args_end >= 0 else len(body)]
        if scan.args_kind == "string":
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
        return raw

    def _close_after(self, out: list) -> str:
        """The object is complete: skip whitespace and the end tag, record the call."""
        stripped = self._after.lstrip()
        if not stripped or (len(stripped) < len(self.end_tag) and self.end_tag.startswith(stripped)):
            return ""  # maybe the end tag is still coming
        rest = stripped[len(self.end_tag):] if stripped.startswith(self.end_tag) else self._after
        self._record(out)
        return rest

    def _record(self, out: list) -> None:
        scan = self._scan
        try:
            obj = json.loads(self._body[: scan.end]) if scan.end >= 0 else None
        except json.JSONDecodeError:
            obj = None
        complete = isinstance(obj, dict) and isinstance(obj.get("name"), str)
        if not complete and not self._sent_header:
            self._abandon(out)
            return
        arguments = self._arguments_whole()
        if self._sent_header and scan.args_kind != "container" and arguments:
            out.append(ToolCallDelta(len(self.calls), arguments=arguments))
        elif not self._sent_header:
            out.append(ToolCallDelta(len(self.calls), id=self._call_id, name=scan.name, arguments=arguments))
        self.calls.append(ToolCall(scan.name, arguments, self._call_id))
        self._body = self._scan = None
        self._after = ""

    def _abandon(self, out: list) -> None:
        """Not a call after all: its text is content, as written."""
        text = self.start_tag + (self._body or "") + self._after
        self._body = self._scan = None
        self._after = ""
        self._flush_text(text, out)

    # ------------------------------------------------------------------------------ API
    def feed(self, text: str) -> list:
        """Take the next piece of generated text; return the deltas that became certain."""
        out: list = []
        while text:
            if self._body is None:
                self._held += text
                text = ""
                self._outside(out, final=False)
                if self._body is not None:  # a call opened: the rest of the held text is its body
                    text, self._held = self._held, ""
            elif self._scan.end >= 0:
                self._after += text
                text = self._close_after(out)
            else:
                text = self._inside(text, out)
        return _merge(out)

    def finish(self) -> list:
        """The end of the text: an open call is recorded (when its name was sent) or becomes content."""
        out: list = []
        if self._body is not None:
            if self._scan.end >= 0 or self._sent_header:
                after = self._after.strip()
                self._record(out)
                if after and not self.end_tag.startswith(after):  # (a cut-off end tag is dropped)
                    self._held += after
            else:
                self._abandon(out)
        self._outside(out, final=True)
        return _merge(out)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _merge(deltas: list) -> list:
    """Adjacent content pieces joined, adjacent argument pieces of one call joined."""
    merged: list = []
    for d in deltas:
        last = merged[-1] if merged else None
        if isinstance(d, ContentDelta) and isinstance(last, ContentDelta):
            last.text += d.text
        elif (isinstance(d, ToolCallDelta) and isinstance(last, ToolCallDelta) and d.index == last.index
              and d.id is None and d.name is None):
            last.arguments += d.arguments
        else:
            merged.append(d)
    return merged


_FENCE = re.compile(r"^```(?:json)?[ \t]*\n(.*?)\n?```$", re.S)


def may_be_bare_call(head: str) -> bool:
    """Whether a reply that starts with ``head`` (leading whitespace removed) may still turn out to be
    a bare JSON call (see :func:`bare_json_calls`)."""
    return head[:1] in ("{", "[") or "```".startswith(head[:3])


def arguments_object(arguments: Any) -> dict | None:
    """A call's arguments (an object, or its JSON text) as a dict; None when they are not a JSON object."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    return arguments if isinstance(arguments, dict) else None


def bare_json_calls(text: str, names: set[str] | None) -> list[ToolCall] | None:
    """The calls of a reply that is nothing but JSON calls without Qwen2.5's markers (small models
    write them so): ``{"name": ..., "arguments": {...}}`` objects (one, several one after another, or a
    list of them), bare or in a Markdown code fence, every name one of ``names`` (None: any name).
    None for anything else (it stays content). The one reader of such replies: the server, the agent
    and the tool benchmark's scorer all read them here, so they agree on what is a call."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    decoder, items, i = json.JSONDecoder(), [], 0
    while i < len(body):
        try:
            value, i = decoder.raw_decode(body, i)
        except json.JSONDecodeError:
            return None
        items.extend(value if isinstance(value, list) else [value])
        while i < len(body) and body[i] in " \t\r\n,":
            i += 1
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"] \
                or (names is not None and item["name"] not in names):
            return None
        arguments = arguments_object(item.get("arguments", {}))
        if arguments is None:
            return None
        calls.append(ToolCall(item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def parse_tool_calls(text: str, start: str = TOOL_CALL_START, end: str = TOOL_CALL_END) -> tuple[str, list[ToolCall]]:
    """The content and the tool calls of a whole generated text (the streaming parser run once)."""
    stream = ToolCallStream(start, end)
    stream.feed(text)
    stream.finish()
    return stream.content, stream.calls


__all__ = ["bare_json_calls", "may_be_bare_call", "ContentDelta", "TOOL_CALL_END", "TOOL_CALL_START", "ToolCall", "ToolCallDelta", "ToolCallStream",
           "new_call_id", "parse_tool_calls"]
