"""The model's own chat template: jinja2, rendered as transformers renders it, encoded safely.

A Qwen2.5 checkpoint carries the template it was trained with (``chat_template`` in
``tokenizer_config.json`` or ``chat_template.jinja``, ``tokenizer.chat_template`` in a GGUF file).
It lists tools as JSON inside ``<tools></tools>`` in the system turn, writes an assistant's calls as
``<tool_call>`` JSON and tool results as ``<tool_response>`` user turns. :class:`ChatTemplate` runs
that template in the environment transformers' ``apply_chat_template`` uses (a sandboxed,
immutable jinja2 environment with ``trim_blocks`` and ``lstrip_blocks``, the loop-control
extension, ``raise_exception``, ``strftime_now``, and a ``tojson`` filter that leaves non-ASCII and
HTML characters alone), so the text is the same, character for character.

Ids. transformers tokenizes the rendered text with every added token recognised anywhere, so a
user who types ``<|im_end|>`` closes their own turn. :meth:`ChatTemplate.encode` gives the same ids
wherever message text holds no special-token text, and otherwise keeps that text ordinary: before
rendering, every character that starts a special token (``<`` for Qwen) inside the messages and
tools is swapped for a random marker that occurs nowhere else; after rendering, the special tokens
left in the text are the template's own (they become special ids), and the markers are turned back
into their character inside ordinary text. Templates that test message text for special-token text
(Qwen3's ``</think>`` split) see the marker instead and take their plain-text branch.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from .vocab import TokenizerError

def _environment():
    """The jinja2 environment transformers renders chat templates in (same options and globals)."""
    import jinja2  # noqa: PLC0415 - only models with a template need jinja2
    import jinja2.ext  # noqa: PLC0415
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}`` (assistant-mask markers): renders its body."""

        tags = {"generation"}

        def parse(self, parser):  # type: ignore[no-untyped-def]
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):  # type: ignore[no-untyped-def]
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        # jinja's own tojson escapes <, >, & for HTML; chat templates expect plain json.dumps
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _deep_replace(value: Any, swap) -> Any:  # type: ignore[no-untyped-def]
    """``value`` (JSON-like) with ``swap`` applied to every string, keys included."""
    if isinstance(value, str):
        return swap(value)
    if isinstance(value, dict):
        return {(swap(k) if isinstance(k, str) else k): _deep_replace(v, swap) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_deep_replace(v, swap) for v in value]
    return value


def _strings(value: Any) -> Any:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                yield k
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


class ChatTemplate:
    """A jinja2 chat template and the extra variables transformers passes it (``bos_token``, ...).

    source: the template text. variables: more template variables (``bos_token``, ``eos_token``;
    transformers passes the tokenizer's special-token map the same way).
    """

    def __init__(self, source: str, variables: dict[str, Any] | None = None) -> None:
        if not isinstance(source, str) or not source.strip():
            raise TokenizerError("a chat template must be non-empty jinja2 text")
        import jinja2  # noqa: PLC0415

        import jinja2.meta  # noqa: PLC0415

        self.source = source
        self.variables = dict(variables or {})
        env = _environment()
        try:
            self._template = env.from_string(source)
            read = jinja2.meta.find_undeclared_variables(env.parse(source))
        except jinja2.TemplateSyntaxError as e:
            raise TokenizerError(f"the chat template does not parse (line {e.lineno}: {e.message}); "
                                 "fix it or serve with the built-in ChatML") from None
        self.knows_tools = "tools" in read
        """Whether the template reads the ``tools`` variable (Qwen2.5's does; first-generation ChatML
        does not, so tools go through the ReAct prompt instead)."""

    # ------------------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: str | Path) -> "ChatTemplate | None":
        """The template stored with a model: a ``.gguf``'s ``tokenizer.chat_template``, a folder's
        ``chat_template.jinja`` or ``tokenizer_config.json`` ``chat_template`` (the ``default`` one
        when it lists several). None when there is none, or when it is openqwen's own ChatML (which
        :func:`~openqwen.tokenizer.chat.render_chatml` renders exactly, the way the model was trained)."""
        from .chat import CHAT_TEMPLATE_JINJA  # noqa: PLC0415 - chat imports nothing of this module

        source, variables = _stored_template(Path(path).expanduser())
        if source is None or source == CHAT_TEMPLATE_JINJA:
            return None
        return cls(source, variables)

    # ------------------------------------------------------------------------------ rendering
    def render(self, messages: Sequence[dict], tools: Sequence[dict] | None = None,
               add_generation_prompt: bool = True, **variables: Any) -> str:
        """The template's text for ``messages`` (and ``tools``), exactly as transformers'
        ``apply_chat_template(..., tokenize=False)`` renders it. Raises :class:`TokenizerError` when
        the template refuses the conversation (its ``raise_exception``) or fails."""
        import jinja2  # noqa: PLC0415

        context = {**self.variables, **variables}
        try:
            return self._template.render(messages=list(messages), tools=None if tools is None else list(tools),
                                         documents=None, add_generation_prompt=add_generation_prompt, **context)
        except jinja2.TemplateError as e:
            raise TokenizerError(f"the chat template refused this conversation: {e}") from None
        except (TypeError, KeyError, AttributeError, IndexError) as e:
            raise TokenizerError(f"the chat template failed on this conversation ({type(e).__name__}: {e}); "
                                 "check the messages' fields") from None

    def encode(self, tokenizer: Any, messages: Sequence[dict], tools: Sequence[dict] | None = None,
               add_generation_prompt: bool = True, **variables: Any) -> list[int]:
        """Prompt ids: the template's special tokens become special ids, the text of the messages and
        tools never does (see the module docstring). ``tokenizer`` needs ``encode(text)`` and
        ``special_tokens`` (text -> id)."""
        specials: dict[str, int] = tokenizer.special_tokens
        if not specials:
            return tokenizer.encode(self.render(messages, tools, add_generation_prompt, **variables))
        data = {"messages": list(messages), "tools": None if tools is None else list(tools),
                "variables": variables}
        seen = [self.source, *(_strings(data))]
        markers: dict[str, str] = {}
        for ch in sorted({s[0] for s in specials}):
            while True:  # a marker that is in no input string (random, so practically the first try)
                marker = f"oqesc{secrets.token_hex(6)}q"
                if not any(marker in s for s in seen):
                    break
            markers[ch] = marker

        def escape(s: str) -> str:
            for ch, marker in markers.items():
                s = s.replace(ch, marker)
            return s

        safe = _deep_replace(data, escape)
        text = self.render(safe["messages"], safe["tools"], add_generation_prompt, **safe["variables"])
        split = re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")
        ids: list[int] = []
        for i, piece in enumerate(split.split(text)):
            if i % 2:  # a special token the template wrote
                ids.append(specials[piece])
            elif piece:
                for ch, marker in markers.items():
                    piece = piece.replace(marker, ch)
                ids.extend(tokenizer.encode(piece))
        return ids

    def __repr__(self) -> str:
        return f"ChatTemplate({len(self.source)} characters, knows_tools={self.knows_tools})"


def chat_template_from_flag(flag: "str | ChatTemplate | None", model: str | Path) -> "ChatTemplate | None":
    """The template a ``--chat-template`` value names: ``auto`` the model's own (None when it has
    none), ``chatml`` (or None) the built-in ChatML, a ``.jinja`` file that template; a
    :class:`ChatTemplate` is taken as it is. ``generate``/``chat``/``serve``/``Engine.from_pretrained``
    all read it here."""
    if flag is None or isinstance(flag, ChatTemplate):
        return flag
    if flag == "chatml":
        return None
    if flag == "auto":
        return ChatTemplate.from_checkpoint(model)
    path = Path(flag).expanduser()
    if not path.is_file():
        raise ValueError(f"--chat-template {flag!r} is not auto, chatml or an existing .jinja file")
    return ChatTemplate(path.read_text(encoding="utf-8"))


def _stored_template(path: Path) -> tuple[str | None, dict[str, Any]]:
    """The template text stored at ``path`` and the special-token variables beside it."""
    if path.is_file() and path.suffix == ".gguf":
        from ..checkpoint.gguf_file import GGUFFile, StringArray  # noqa: PLC0415 - numpy only, no torch

        try:
            with GGUFFile(path) as g:
                meta = g.metadata
                source = meta.get("tokenizer.chat_template")
                tokens = meta.get("tokenizer.ggml.tokens")
                variables = {}
                for name in ("bos", "eos", "pad", "unk"):
                    tid = meta.get(f"tokenizer.ggml.{name}_token_id")
                    if isinstance(tokens, StringArray) and isinstance(tid, int) and 0 <= tid < len(tokens):
                        variables[f"{name}_token"] = tokens[tid]
        except ValueError as e:
            raise TokenizerError(str(e)) from None
        return (source if isinstance(source, str) else None), variables
    if path.is_file() and path.name.endswith(".jinja"):
        return path.read_text(encoding="utf-8"), {}
    if not path.is_dir():
        return None, {}
    config: dict[str, Any] = {}
    cfg = path / "tokenizer_config.json"
    if cfg.exists():
        try:
            config = json.loads(cfg.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{cfg} is not valid JSON ({e})") from None
    variables = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = config.get(name)
        if isinstance(value, dict):  # the AddedToken form {"content": ...}
            value = value.get("content")
        if isinstance(value, str):
            variables[name] = value
    jinja = path / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8"), variables
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    return (source if isinstance(source, str) else None), variables


__all__ = ["ChatTemplate", "chat_template_from_flag"]
