"""Function calling in the model's own format: its chat template renders the tools, and calls are
read from the text it generates (Qwen2.5: ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``,
several in a row for parallel calls; results go back as ``tool`` messages the template renders as
``<tool_response>``). Parsing is :func:`openqwen.serve.tools.parse_tool_calls`, the same parser the
API's responses and streams use, plus one leniency (:func:`read_calls`): a reply that is nothing
but call objects without the ``<tool_call>`` tags (what the 0.5B Qwen2.5-Coder writes) counts as
those calls.

>>> FunctionCallFormat().parse('<tool_call>\\n{"name": "calculator", "arguments": {"expression": "1+1"}}\\n</tool_call>').calls[0].arguments
'{"expression": "1+1"}'
"""

from __future__ import annotations

from typing import Any

from ..serve.tools import TOOL_CALL_START, ToolCall, bare_json_calls, parse_tool_calls
from .loop import Parsed

__all__ = ["FunctionCallFormat", "read_calls"]

_CHAT_SPECIALS = ("<|im_end|>", "<|im_start|>", "<|endoftext|>")


def read_calls(text: str, names: set[str] | None = None) -> tuple[str, list[ToolCall], bool]:
    """(content, calls, bare): calls in ``<tool_call>`` tags, else a reply of bare call objects
    (:func:`openqwen.serve.tools.bare_json_calls`; with ``names``, only of those tools, as the server
    reads them)."""
    content, calls = parse_tool_calls(text)
    if calls:
        return content, calls, False
    bare = bare_json_calls(text, names)
    return ("", bare, True) if bare else (content, [], False)


class FunctionCallFormat:
    """Tools through the model's chat template; any number of calls per step."""

    name = "fncall"
    stop: list[str] = []
    keep_special_tokens = True  # <tool_call> and </tool_call> are special tokens of Qwen2.5


    def template_for(self, template: Any) -> Any:
        if template is None or not getattr(template, "knows_tools", False):
            raise ValueError("function calling needs a model whose chat template renders tools (e.g. Qwen2.5); "
                             "this one has none: use the ReAct format (--format react)")
        return template

    def parse(self, text: str) -> Parsed:
        for special in _CHAT_SPECIALS:  # kept with the tool-call markers; never part of an answer
            text = text.replace(special, "")
        content, calls, _ = read_calls(text)
        if not calls and TOOL_CALL_START in content:
            return Parsed(content, malformed="the text between <tool_call> and </tool_call> is not a JSON object "
                                             'with a "name" and "arguments"')
        return Parsed(content, calls=calls, final=None if calls else content)
