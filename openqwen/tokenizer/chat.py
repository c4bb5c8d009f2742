"""Chat prompts: the one path from OpenAI-style messages to prompt ids.

The server, the evaluation harness, the chat CLI and the engine all build chat prompts through
:func:`chat_prompt_ids`, so history trimming and validation behave the same everywhere.
"""

from __future__ import annotations

from typing import Any, Sequence

DEFAULT_CHAT_WINDOW = 6144
"""The release trims chat history, oldest turn first, to fit this many tokens."""


def chat_prompt_ids(tokenizer: Any, messages: Sequence[dict], window: int = DEFAULT_CHAT_WINDOW) -> list[int]:
    """ChatML ids for ``messages`` with the generation prompt, dropping the oldest non-system turns
    until the prompt fits ``window`` tokens (the release's behaviour). The last message is never dropped."""
    messages = list(messages)
    if not messages:
        raise ValueError("messages is empty; give at least one {'role': 'user', 'content': ...}")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
            raise ValueError(f"each message needs a 'role' and a string 'content', got {m!r}")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    while len(ids) > window:
        droppable = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
        if not droppable:
            raise ValueError(
                f"the conversation needs {len(ids)} tokens even without history; the window is {window}: "
                "shorten the last message"
            )
        first = droppable[0]
        # drop a whole turn: the oldest user message and the assistant reply that follows it
        drop = [first]
        if first + 1 < len(messages) - 1 and messages[first + 1]["role"] == "assistant":
            drop.append(first + 1)
        messages = [m for i, m in enumerate(messages) if i not in drop]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return ids


