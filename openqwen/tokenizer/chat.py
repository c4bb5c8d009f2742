"""ChatML: the one path from OpenAI-style messages to prompt ids, with the SFT loss mask.

* :func:`render_chatml`: the ids (and optionally the assistant mask that SFT trains on) of a
  message list; :meth:`QwenTokenizer.apply_chat_template` is this function.
* :func:`chat_prompt_ids`: a generation prompt trimmed to a window, oldest turn first. The server,
  the evaluation harness, the chat CLI and the engine all build chat prompts through it, so
  history trimming and validation behave the same everywhere.
* :data:`CHAT_TEMPLATE_JINJA`: the same rendering as a Jinja template, written into
  ``tokenizer_config.json`` for tools that read it (transformers, llama.cpp, vLLM).
* :func:`chat_messages`: messages checked and reduced to what chat templates read, tool calls and
  tool results included.

With ``template=`` (a :class:`~openqwen.tokenizer.template.ChatTemplate`, the model's own jinja
template) :func:`chat_prompt_ids` renders through it instead of ChatML; with ``tools=`` and no
template that knows tools, the tools go into the first generation's ReAct prompt
(:mod:`~openqwen.tokenizer.react`).

Rendering needs only ``encode`` and the two turn-marker ids, so this module does not import the
tokenizer class (which imports this module for its ``apply_chat_template``).
"""

from __future__ import annotations

import json
from typing import Any, Protocol, Sequence

from .react import react_conversation
from .vocab import TokenizerError

DEFAULT_SYSTEM = "You are a helpful assistant."
# Roles a ChatML turn may carry. tool/function/observation leave room for the agent work.
CHAT_ROLES = ("system", "user", "assistant", "tool", "function", "observation")

DEFAULT_CHAT_WINDOW = 6144
"""The release trims chat history, oldest turn first, to fit this many tokens."""

# A Jinja chat template equal to render_chatml for plain messages, for tools that read
# tokenizer_config.json (transformers' apply_chat_template, llama.cpp, vLLM).
CHAT_TEMPLATE_JINJA = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class ChatWindowError(TokenizerError):
    """The system turn and the last message alone need more tokens than the window holds.

    ``needed`` is that shortest prompt's length, ``window`` the limit, so a server can say how far
    over it is without rendering again.
    """

    def __init__(self, needed: int, window: int) -> None:
        super().__init__(f"the conversation needs {needed} tokens even without history; the window is {window}: "
                         "shorten the last message (or the system prompt)")
        self.needed = needed
        self.window = window


class ChatMLTokenizer(Protocol):
    """What rendering ChatML needs from a tokenizer."""

    @property
    def im_start_id(self) -> int: ...

    @property
    def im_end_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...


# ------------------------------------------------------------------------------ message validation
def message_role(message: object, n: int) -> str:
    """The role of message number ``n``; raises :class:`TokenizerError` naming what is wrong."""
    if not isinstance(message, dict) or "role" not in message:
        raise TokenizerError(f"message {n} must be a dict with 'role' and 'content', got {message!r:.80}")
    role = message["role"]
    if role not in CHAT_ROLES:
        raise TokenizerError(f"message {n} has role {role!r}; expected one of {', '.join(CHAT_ROLES)}")
    return role


def message_text(message: dict, n: int) -> str:
    """The content of message number ``n`` as text: a string, ``None`` (empty), or OpenAI text parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts carry meaning here
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise TokenizerError(f"message {n}: only text content parts are supported, got {part!r:.80}")
        return "".join(texts)
    raise TokenizerError(f"message {n}: content must be a string or a list of text parts, got {type(content).__name__}")


def plain_messages(messages: Sequence[dict]) -> list[dict[str, str]]:
    """``messages`` checked and reduced to ``{"role", "content": str}`` dicts."""
    if isinstance(messages, dict) or not isinstance(messages, Sequence):
        raise TokenizerError("messages must be a list of {'role': ..., 'content': ...} dicts")
    return [{"role": message_role(m, n), "content": message_text(m, n)} for n, m in enumerate(messages)]


def _tool_call(call: object, n: int, k: int) -> dict[str, Any]:
    """Assistant tool call ``k`` of message ``n`` in OpenAI's form, its arguments parsed to a dict
    (templates write them with ``tojson``, as vLLM and transformers expect)."""
    where = f"message {n}: tool_calls[{k}]"
    if not isinstance(call, dict):
        raise TokenizerError(f"{where} must be {{'id', 'type': 'function', 'function': {{'name', 'arguments'}}}}")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise TokenizerError(f"{where}.function.name must be a non-empty string")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{where}.function.arguments is not valid JSON ({e.msg} at character {e.pos})") \
                from None
    if not isinstance(arguments, dict):
        raise TokenizerError(f"{where}.function.arguments must be a JSON object")
    out: dict[str, Any] = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if call.get("id") is not None:
        out["id"] = str(call["id"])
    return out


def chat_messages(messages: Sequence[dict]) -> list[dict[str, Any]]:
    """``messages`` checked and reduced to what chat templates read: ``role``, ``content`` (text, or
    None for an assistant message that only calls tools), an assistant's ``tool_calls`` (arguments
    as dicts), a tool result's ``tool_call_id`` and ``name``."""
    if isinstance(messages, dict) or not isinstance(messages, Sequence):
        raise TokenizerError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for n, m in enumerate(messages):
        role = message_role(m, n)
        turn: dict[str, Any] = {"role": role, "content": message_text(m, n)}
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls:
            if not isinstance(calls, list):
                raise TokenizerError(f"message {n}: tool_calls must be a list")
            turn["tool_calls"] = [_tool_call(c, n, k) for k, c in enumerate(calls)]
            if m.get("content") is None:
                turn["content"] = None
        if role in ("tool", "function"):
            for key in ("tool_call_id", "name"):
                if m.get(key) is not None:
                    turn[key] = str(m[key])
        out.append(turn)
    return out


# ------------------------------------------------------------------------------ rendering
def render_chatml(
    tokenizer: ChatMLTokenizer,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    return_assistant_mask: bool = False,
    default_system: str | None = DEFAULT_SYSTEM,
) -> list[int] | tuple[list[int], list[bool]]:
    """ChatML ids of an OpenAI-style message list.

    Each turn is ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``; with ``add_generation_prompt`` the
    ids end with ``<|im_start|>assistant\\n``. When the first message is not a system message,
    ``default_system`` is put first (pass ``None`` for no system turn). The role, the newline and
    the content are encoded separately, as the first-generation release does, so a prompt that
    ends with ``assistant\\n`` is an exact prefix of the same chat with the reply added: what
    the model sees at inference matches what it was trained on. Content is always ordinary
    text (``tokenizer.encode`` without ``allowed_special``): a ``"<|im_end|>"`` typed by a user
    cannot close its turn.

    With ``return_assistant_mask`` it also returns a list of bools, True on the tokens that carry
    the SFT loss: every assistant turn's content and its closing ``<|im_end|>``.
    """
    turns = plain_messages(messages)
    if default_system is not None and (not turns or turns[0]["role"] != "system"):
        turns.insert(0, {"role": "system", "content": default_system})
    im_start, im_end = tokenizer.im_start_id, tokenizer.im_end_id
    nl = tokenizer.encode("\n")
    ids: list[int] = []
    mask: list[bool] = []

    def add(piece: list[int], loss: bool) -> None:
        ids.extend(piece)
        mask.extend([loss] * len(piece))

    for turn in turns:
        add([im_start] + tokenizer.encode(turn["role"]) + nl, False)
        add(tokenizer.encode(turn["content"]) + [im_end], turn["role"] == "assistant")
        add(nl, False)
    if add_generation_prompt:
        add([im_start] + tokenizer.encode("assistant") + nl, False)
    return (ids, mask) if return_assistant_mask else ids


# ------------------------------------------------------------------------------ history trimming
def _drop_oldest(turns: list[dict]) -> list[dict] | None:
    """``turns`` without the oldest exchange: the first non-system message and what follows it up
    to the next user message (an assistant reply, its tool calls and their results go together);
    the last message is never dropped. None when nothing can go."""
    droppable = [i for i, m in enumerate(turns[:-1]) if m["role"] != "system"]
    if not droppable:
        return None
    first = end = droppable[0]
    while end + 1 < len(turns) - 1 and turns[end + 1]["role"] not in ("user", "system"):
        end += 1
    return turns[:first] + turns[end + 1:]


def chat_prompt_ids(tokenizer, messages: Sequence[dict], window: int = DEFAULT_CHAT_WINDOW,
                    tools: Sequence[dict] | None = None, template: Any = None) -> list[int]:
    """Prompt ids for ``messages`` with the generation prompt, dropping the oldest non-system turns
    until the prompt fits ``window`` tokens (the release's behaviour). A turn is a user message
    and what follows it up to the next user message; the last message is never dropped.

    Three renderings, one trimming rule:

    * ``template`` (a :class:`~openqwen.tokenizer.template.ChatTemplate`): the model's own template,
      ``tools`` passed to it when it knows tools; special tokens only where the template writes them;
    * ``tools`` without a template that knows them: ChatML with the first generation's ReAct prompt
      (:func:`~openqwen.tokenizer.react.react_conversation`), ending inside the assistant turn when
      the conversation ends with tool results;
    * otherwise ChatML through ``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``
      (a :class:`~openqwen.tokenizer.QwenTokenizer`, or a test double), given the messages checked and
      reduced to string contents.

    Raises :class:`ChatWindowError` when even the system turn and the last message do not fit,
    :class:`TokenizerError` for malformed messages.
    """
    if not isinstance(window, int) or window < 1:
        raise TokenizerError(f"the chat window must be a positive number of tokens, got {window!r}")
    if not messages:
        raise TokenizerError("messages is empty; give at least one {'role': 'user', 'content': ...}")
    if template is not None and (not tools or template.knows_tools):
        turns = chat_messages(messages)

        def render(ts: list[dict]) -> list[int]:
            return template.encode(tokenizer, ts, tools=list(tools) if tools else None, add_generation_prompt=True)
    elif tools:
        turns, tail = react_conversation(chat_messages(messages), tools)
        tail_ids = tokenizer.encode(tail) if tail else []
        if template is not None:  # the model's template for the turns, the ReAct text inside them
            def render(ts: list[dict]) -> list[int]:
                return template.encode(tokenizer, ts, add_generation_prompt=True) + tail_ids
        else:
            def render(ts: list[dict]) -> list[int]:
                return tokenizer.apply_chat_template(ts, add_generation_prompt=True) + tail_ids
    else:
        turns = plain_messages(messages)

        def render(ts: list[dict]) -> list[int]:
            return tokenizer.apply_chat_template(ts, add_generation_prompt=True)
    ids = render(turns)
    while len(ids) > window:
        shorter = _drop_oldest(turns)
        if shorter is None:
            raise ChatWindowError(len(ids), window)
        turns = shorter
        ids = render(turns)
    return ids
