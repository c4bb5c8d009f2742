"""Preference data: pairs of a preferred (``chosen``) and a dispreferred (``rejected``) reply to a prompt.

One JSON object per line (``.jsonl``, ``.jsonl.gz``), in any of the common shapes:

- ``{"prompt": "text", "chosen": "text", "rejected": "text"}`` (the prompt becomes one user turn);
- ``{"messages": [{"role": ..., "content": ...}, ...], "chosen": ..., "rejected": ...}``;
- the release's ``conversations`` style: ``{"conversations": [{"from": "human", "value": ...}],
  "system": "optional", "chosen": {"from": "gpt", "value": ...}, "rejected": {...}}``;
- conversational (TRL's): ``"prompt"`` a message list, ``"chosen"``/``"rejected"`` a list holding one
  assistant message, or whole conversations that share the prompt ("implicit prompt": the turns
  before the final assistant message, identical in both).

A reply may be a string, a message ``{"role"/"from": "assistant", "content"/"value": ...}`` or such a
list. An optional number ``"margin"`` (how much better chosen is) is kept for the margin loss.
A row that cannot be used (not JSON, missing fields, empty or identical replies) is an error that
names ``FILE:LINE``; with ``skip_bad=True`` it is counted in the :class:`SkipReport` instead (never
dropped silently).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
                "system": "system"}


class PreferenceDataError(ValueError):
    """A preference row that cannot be used; the message names the file and line."""


@dataclass
class PreferencePair:
    messages: list[dict[str, str]]
    """The prompt as chat messages (OpenAI style), ending with the turn the replies answer."""
    chosen: str
    rejected: str
    margin: float = 0.0
    """How much better ``chosen`` is (the data's ``margin`` field; 0 when absent)."""


@dataclass
class SkipReport:
    """What :func:`read_preferences` left out when asked to skip bad rows."""

    rows: int = 0
    """Non-empty lines read."""
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    """The first few reasons, each naming FILE:LINE."""

    def __str__(self) -> str:
        if not self.skipped:
            return f"{self.rows} rows, none skipped"
        more = f" (and {self.skipped - len(self.reasons)} more)" if self.skipped > len(self.reasons) else ""
        return f"{self.rows} rows, {self.skipped} skipped: " + "; ".join(self.reasons) + more


MAX_REASONS = 5


def _message(turn: Any, what: str) -> dict[str, str]:
    if not isinstance(turn, dict):
        raise PreferenceDataError(f"{what} must be a message object, got {type(turn).__name__}")
    role = turn.get("role", turn.get("from"))
    content = turn.get("content", turn.get("value"))
    if role is None or content is None:
        raise PreferenceDataError(f"{what} needs 'role' and 'content' (or 'from' and 'value')")
    name = ROLE_ALIASES.get(str(role).lower())
    if name is None:
        raise PreferenceDataError(f"{what} has unknown role {role!r} (use system, user or assistant)")
    if not isinstance(content, str):
        raise PreferenceDataError(f"{what} content must be a string")
    return {"role": name, "content": content}


def _messages(turns: Any, what: str) -> list[dict[str, str]]:
    if isinstance(turns, str):
        return [{"role": "user", "content": turns}]
    if not isinstance(turns, list):
        raise PreferenceDataError(f"{what} must be a string or a list of messages")
    return [_message(t, f"{what} turn {k}") for k, t in enumerate(turns)]


def _reply(value: Any, what: str) -> tuple[list[dict[str, str]], str]:
    """(turns before the reply, the reply text) of a chosen/rejected field."""
    if isinstance(value, str):
        return [], value
    if isinstance(value, dict):
        value = [value]
    turns = _messages(value, what)
    if not turns or turns[-1]["role"] != "assistant":
        raise PreferenceDataError(f"{what} must end with an assistant message")
    return turns[:-1], turns[-1]["content"]


def parse_row(obj: Any, where: str = "row") -> PreferencePair:
    """One JSON object (any shape of the module doc) -> a :class:`PreferencePair`; raises
    :class:`PreferenceDataError` naming ``where`` when it cannot be used."""
    try:
        if not isinstance(obj, dict):
            raise PreferenceDataError("expected a JSON object with chosen and rejected")
        missing = [k for k in ("chosen", "rejected") if k not in obj]
        if missing:
            raise PreferenceDataError(f"missing {' and '.join(missing)}")
        before_c, chosen = _reply(obj["chosen"], "chosen")
        before_r, rejected = _reply(obj["rejected"], "rejected")
        if "messages" in obj:
            prompt = _messages(obj["messages"], "messages")
        elif "conversations" in obj:
            prompt = _messages(obj["conversations"], "conversations")
        elif "prompt" in obj:
            prompt = _messages(obj["prompt"], "prompt")
        else:
            prompt = []
        for before, side in ((before_c, "chosen"), (before_r, "rejected")):
            if before and before != (prompt or before_c):
                raise PreferenceDataError(f"the turns before the {side} reply differ from the prompt; "
                                          "both replies must answer the same conversation")
        prompt = prompt or before_c
        if isinstance(obj.get("system"), str) and obj["system"] and not (prompt and prompt[0]["role"] == "system"):
            prompt = [{"role": "system", "content": obj["system"]}] + prompt
        if not any(m["role"] == "user" for m in prompt):
            raise PreferenceDataError("no prompt: give 'prompt', 'messages' or 'conversations' with a user turn")
        if prompt[-1]["role"] == "assistant":
            raise PreferenceDataError("the prompt ends with an assistant turn; it must end with the turn the "
                                      "replies answer")
        if not chosen.strip() or not rejected.strip():
            raise PreferenceDataError("chosen and rejected must be non-empty")
        if chosen == rejected:
            raise PreferenceDataError("chosen and rejected are identical, so the row states no preference")
        margin = obj.get("margin", 0.0)
        if isinstance(margin, bool) or not isinstance(margin, (int, float)):
            raise PreferenceDataError(f"margin must be a number, got {margin!r}")
        return PreferencePair(prompt, chosen, rejected, float(margin))
    except PreferenceDataError as e:
        raise PreferenceDataError(f"{where}: {e}") from None


def _open(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_preferences(path: str | Path, skip_bad: bool = False) -> tuple[list[PreferencePair], SkipReport]:
    """The pairs of a JSONL file and what was skipped. A bad row raises :class:`PreferenceDataError`
    naming ``FILE:LINE``, unless ``skip_bad`` (then it is counted in the report)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no preference data at {path}")
    pairs, report = [], SkipReport()
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.rows += 1
            where = f"{path}:{n}"
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PreferenceDataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                pairs.append(parse_row(obj, where))
            except PreferenceDataError as e:
                if not skip_bad:
                    raise PreferenceDataError(f"{e} (to count and skip bad rows instead: --skip-bad for reward score, "
                                              "--reward.skip_bad true or --dpo.skip_bad true for training)") from None
                report.skipped += 1
                if len(report.reasons) < MAX_REASONS:
                    report.reasons.append(str(e))
    if not pairs:
        raise PreferenceDataError(f"{path}: no usable preference pairs ({report})")
    return pairs, report


def pair_to_json(pair: PreferencePair) -> dict[str, Any]:
    row: dict[str, Any] = {"messages": pair.messages, "chosen": pair.chosen, "rejected": pair.rejected}
    if pair.margin:
        row["margin"] = pair.margin
    return row


def write_preferences(pairs: Iterable[PreferencePair], path: str | Path) -> Path:
    """Write ``pairs`` as JSONL in the ``messages`` shape (what :func:`read_preferences` reads back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(json.dumps(pair_to_json(pair), ensure_ascii=False) + "\n")
    return path
