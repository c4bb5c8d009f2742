"""Fill-in-the-middle (FIM) for code pretraining, in Qwen2.5-Coder's format.

A document ``prefix + middle + suffix`` is rearranged prefix-suffix-middle (PSM):
``<|fim_prefix|> prefix <|fim_suffix|> suffix <|fim_middle|> middle``, so the ordinary next-token
loss teaches the model to write the middle given both sides. At inference the prompt is the same
up to ``<|fim_middle|>`` and the model writes the middle, ending it with ``<|endoftext|>``.

* :class:`FimRows` wraps packed pretraining rows: each document piece of a row (rows are documents
  joined by ``<|endoftext|>``, cut at the row length) is rearranged with probability ``rate`` at two
  cut points drawn uniformly; the three sentinel tokens it adds push the row's last tokens out. The
  draw is a function of (seed, row index), so a resumed run sees the same rows.
* :func:`fim_prompt_ids` builds the inference prompt (``openqwen generate --fim-prefix ...``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .batches import IGNORE_INDEX

FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>")
"""Qwen2.5-Coder's sentinels (ids 151659, 151661, 151660 in its tokenizer), in PSM order."""
FIM_STOP_TOKENS = ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|im_end|>")
"""Tokens that end a generated middle (those the tokenizer has)."""


def fim_token_ids(tokenizer: Any, names: Sequence[str] = FIM_TOKENS) -> tuple[int, int, int]:
    """Ids of the prefix, suffix and middle sentinels; a clear error when the tokenizer lacks them."""
    if len(names) != 3:
        raise ValueError(f"FIM needs three sentinel tokens (prefix, suffix, middle), got {list(names)}")
    special = tokenizer.special_tokens
    missing = [n for n in names if n not in special]
    if missing:
        raise ValueError(f"the tokenizer has no {', '.join(missing)} token: use a Qwen2.5(-Coder) tokenizer, or "
                         "name three of its special tokens in data.fim_tokens (e.g. "
                         "[<|extra_0|>, <|extra_1|>, <|extra_2|>] for a first-generation vocabulary)")
    return tuple(special[n] for n in names)  # type: ignore[return-value]


def psm(prefix: Sequence[int], middle: Sequence[int], suffix: Sequence[int], ids: tuple[int, int, int]) -> list[int]:
    """The PSM arrangement of one document's three parts."""
    p, s, m = ids
    return [p, *prefix, s, *suffix, m, *middle]


def fim_prompt_ids(tokenizer: Any, prefix: str, suffix: str, names: Sequence[str] = FIM_TOKENS) -> list[int]:
    """The prompt whose continuation is the middle between ``prefix`` and ``suffix``."""
    p, s, m = fim_token_ids(tokenizer, names)
    return [p, *tokenizer.encode(prefix), s, *tokenizer.encode(suffix), m]


def fim_stop_ids(tokenizer: Any) -> list[int]:
    special = tokenizer.special_tokens
    return [special[n] for n in FIM_STOP_TOKENS if n in special]


def transform_row(ids: np.ndarray, n_real: int, eos_id: int, rate: float, sentinels: tuple[int, int, int],
                  rng: np.random.Generator) -> np.ndarray:
    """One packed row with each of its document pieces rearranged PSM with probability ``rate``.

    ``n_real``: tokens before the corpus-end padding (left as they are). A piece is the run of tokens
    between ``eos_id`` separators (the separator stays after it); the result is cut back to the row
    length."""
    out: list[int] = []
    real = ids[:n_real].tolist()
    start = 0
    while start < len(real):
        try:
            end = real.index(eos_id, start)
        except ValueError:
            end = len(real)
        piece = real[start:end]
        if len(piece) >= 2 and rng.random() < rate:
            a, b = sorted(rng.integers(0, len(piece) + 1, size=2).tolist())
            piece = psm(piece[:a], piece[a:b], piece[b:], sentinels)
        out.extend(piece)
        if end < len(real):
            out.append(eos_id)
        start = end + 1
    out = out[:n_real]
    return np.concatenate([np.asarray(out, dtype=ids.dtype), ids[n_real:]])


class FimRows:
    """Packed pretraining rows (:class:`~openqwen.train.batches.PackedRows`) with FIM applied at
    ``rate`` per document piece; every real token, sentinels included, carries the loss."""

    def __init__(self, rows: Any, rate: float, sentinels: tuple[int, int, int], eos_id: int, seed: int = 0) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"data.fim_rate must be between 0 and 1, got {rate}")
        self.rows, self.rate, self.sentinels, self.eos_id, self.seed = rows, rate, sentinels, eos_id, seed
        self.seq_len = rows.seq_len

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = self.rows[i]
        labels = row["labels"]
        n_real = int(np.flatnonzero(labels == IGNORE_INDEX)[0]) if (labels == IGNORE_INDEX).any() else len(labels)
        rng = np.random.default_rng([self.seed, int(i)])
        ids = transform_row(row["input_ids"], n_real, self.eos_id, self.rate, self.sentinels, rng)
        new_labels = ids.copy()
        new_labels[n_real:] = IGNORE_INDEX
        return {**row, "input_ids": ids, "labels": new_labels}
