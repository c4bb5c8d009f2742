"""ReAct, the first generation's tool format: ``Thought / Action / Action Input / Observation``.

The prompt lists the tools the way the release did (:mod:`openqwen.tokenizer.react`, ChatML with
an instruction and ``Question:``); generation stops at ``Observation:``; the agent runs the action,
appends ``Observation: <result>`` inside the same assistant turn and generates again, until the
model writes ``Final Answer:``. Used for models whose chat template knows no tools (the first
generation, openqwen's nano models), or on request (``openqwen agent --format react``).

>>> ReactFormat().parse('Thought: add them\\nAction: calculator\\nAction Input: {"expression": "2+2"}\\n').calls[0].name
'calculator'
"""

from __future__ import annotations

from typing import Any

from ..serve.tools import ToolCall
from ..tokenizer.react import REACT_STOP, parse_react
from .loop import Parsed

__all__ = ["ReactFormat"]


class ReactFormat:
    """Tools as a ReAct prompt in ChatML; one call per step; ``Observation:`` stops generation."""

    name = "react"
    stop = [REACT_STOP]
    keep_special_tokens = False

    def template_for(self, template: Any) -> Any:
        return None  # the ReAct prompt is ChatML's, whatever the model's own template says

    def parse(self, text: str) -> Parsed:
        step = parse_react(text)
        thought = step.thought or ""
        if step.action:
            if step.action_input is None:
                return Parsed(thought, malformed=f"Action {step.action!r} has no 'Action Input:' line")
            return Parsed(thought, calls=[ToolCall(step.action.strip(), step.action_input.strip())])
        if step.final_answer is not None:
            return Parsed(thought, final=step.final_answer)
        return Parsed(text.strip(), final=None)  # no format at all: the text is the answer
