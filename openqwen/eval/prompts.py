"""Chat prompts of the evaluation tasks, in the format the model was trained on.

A chat model answers best in its own chat format, and that includes its default system prompt:
Qwen2.5 models ship a template whose default is "You are Qwen, created by Alibaba Cloud. You are a
helpful assistant.", not the first generation's "You are a helpful assistant." that openqwen's
ChatML renderer puts first. :func:`model_system_prompt` reads the default from the model's own
template (a GGUF's ``tokenizer.chat_template``, a folder's ``tokenizer_config.json``) by rendering it
for one user message; every chat task then sends that system message explicitly, so the ids equal
what the template itself renders for a system + user conversation (a test checks them against
transformers' ``apply_chat_template`` on the real file's template).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tokenizer.chat import DEFAULT_SYSTEM

_PROBE = "openqwen-probe-user-message"


def chat_template_text(path: str | Path) -> str | None:
    """The jinja chat template stored with a model: a ``.gguf``'s ``tokenizer.chat_template``, or
    ``chat_template`` in a folder's ``tokenizer_config.json`` (or its ``chat_template.jinja``)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        from ..checkpoint.gguf_file import GGUFFile  # noqa: PLC0415 - numpy only, no torch

        with GGUFFile(p) as g:
            value = g.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None
    if p.is_dir():
        jinja = p / "chat_template.jinja"
        if jinja.exists():
            return jinja.read_text(encoding="utf-8")
        cfg = p / "tokenizer_config.json"
        if cfg.exists():
            value = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            return value if isinstance(value, str) else None
    return None


def system_prompt_of_template(template: str) -> str | None:
    """The system message a template puts before a lone user message (None: it puts none).

    Rendered, not pattern-matched: the template runs (sandboxed jinja2) on ``[user]`` and the text of
    a leading ``<|im_start|>system`` turn is read back."""
    import jinja2  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
    try:
        text = env.from_string(template).render(messages=[{"role": "user", "content": _PROBE}],
                                                add_generation_prompt=True, tools=None)
    except jinja2.TemplateError:
        return None
    head = "<|im_start|>system\n"
    if not text.startswith(head) or "<|im_end|>" not in text:
        return None
    system, _, rest = text[len(head):].partition("<|im_end|>")
    return system if _PROBE in rest and _PROBE not in system else None


def model_system_prompt(path: str | Path | None) -> str:
    """The default system prompt of the model at ``path`` (its template's), else the first
    generation's ``You are a helpful assistant.``."""
    if path is None:
        return DEFAULT_SYSTEM
    try:
        template = chat_template_text(path)
    except (OSError, ValueError):
        template = None
    found = system_prompt_of_template(template) if template else None
    return DEFAULT_SYSTEM if found is None else found


def with_system(messages: list[dict[str, Any]], system: str | None) -> list[dict[str, Any]]:
    """``messages`` with ``system`` first, unless they already start with a system message."""
    if system is None or (messages and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}] + messages
