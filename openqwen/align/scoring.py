"""Scoring files with a reward model (``openqwen reward score``).

Two kinds of JSONL rows, told apart by the first row:

- preference pairs (:mod:`.preferences`): each row gets ``chosen_reward`` and ``rejected_reward``,
  the file gets :func:`~openqwen.align.reward.pair_metrics` (accuracy, margin, calibration);
- replies: ``{"prompt" | "messages" | "conversations": ..., "response": "..."}``: each row gets ``reward``.

Replies are encoded as in training (:mod:`.pairs`: the ChatML prompt, the reply, ``<|im_end|>``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .pairs import encode_pairs, prompt_ids, reply_ids
from .preferences import PreferenceDataError, SkipReport, _messages, _open, read_preferences
from .reward import load_reward_model, pair_metrics, score_pairs


def _first_row(path: Path) -> Any:
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError as e:
                    raise PreferenceDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
    raise PreferenceDataError(f"{path}: the file has no rows")


def read_replies(path: Path, skip_bad: bool = False) -> tuple[list[tuple[int, list[dict], str]], SkipReport]:
    """(line, prompt messages, response) of every usable reply row."""
    rows, report = [], SkipReport()
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            report.rows += 1
            try:
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PreferenceDataError(f"not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("response"), str):
                    raise PreferenceDataError("needs a string 'response'")
                key = next((k for k in ("messages", "conversations", "prompt") if k in obj), None)
                if key is None:
                    raise PreferenceDataError("needs 'prompt', 'messages' or 'conversations'")
                rows.append((n, _messages(obj[key], key), obj["response"]))
            except PreferenceDataError as e:
                if not skip_bad:
                    raise PreferenceDataError(f"{path}:{n}: {e} (or pass --skip-bad)") from None
                report.skipped += 1
                if len(report.reasons) < 5:
                    report.reasons.append(f"{path}:{n}: {e}")
    if not rows:
        raise PreferenceDataError(f"{path}: no usable rows ({report})")
    return rows, report


def score_file(model: str | Path, data: str | Path, batch_size: int = 16, skip_bad: bool = False,
               device: str = "cpu", dtype: str = "fp32") -> dict[str, Any]:
    """Rewards of every row of ``data`` (and pair metrics for preference data)."""
    from openqwen.train.pretrain import load_tokenizer

    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"no data at {data}")
    rm = load_reward_model(model, dtype=dtype, device=device)
    tokenizer = load_tokenizer(str(model))
    limit = rm.config.max_position_embeddings
    first = _first_row(data)
    if isinstance(first, dict) and "chosen" in first:
        pairs, report = read_preferences(data, skip_bad=skip_bad)
        encoded, dropped = encode_pairs(pairs, tokenizer, limit)
        if dropped:
            raise ValueError(f"{dropped} pairs of {data} are longer than the model's {limit} positions")
        chosen, rejected = score_pairs(rm, encoded, batch_size, tokenizer.eos_id)
        rows = [{"chosen_reward": c, "rejected_reward": r} for c, r in zip(chosen, rejected)]
        return {"kind": "pairs", **pair_metrics(chosen, rejected), "skipped": report.skipped, "rows": rows}
    replies, report = read_replies(data, skip_bad)
    sequences = [prompt_ids(tokenizer, m) + reply_ids(tokenizer, r) for _, m, r in replies]
    for (line, _, _), seq in zip(replies, sequences):
        if len(seq) > limit:
            raise ValueError(f"{data}:{line}: {len(seq)} tokens, longer than the model's {limit} positions")
    rewards = rm.score_sequences(sequences, batch_size, tokenizer.eos_id)
    mean = sum(rewards) / len(rewards)
    return {"kind": "replies", "rows_scored": len(rewards), "mean_reward": mean, "skipped": report.skipped,
            "rows": [{"line": line, "reward": r} for (line, _, _), r in zip(replies, rewards)]}
