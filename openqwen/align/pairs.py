"""Preference pairs as token rows: what the reward-model and DPO tasks train on.

A reply is encoded exactly as the engine sees a chat and its answer: the ChatML prompt with the
generation prompt (``...<|im_start|>assistant\\n``, :func:`openqwen.tokenizer.chat.render_chatml`),
then the reply's tokens and the ``<|im_end|>`` that closes the turn. That ``<|im_end|>`` is the last
real token of the row, where the reward model reads its reward; a PPO rollout from the engine ends
the same way.

:class:`PairRows` is a row dataset (``len``/``[]``) for the one trainer: each row holds both sides
right-padded to ``seq_len`` (``chosen_ids``/``chosen_mask``, ``rejected_ids``/``rejected_mask``, the
reply's first position ``prompt_len`` and the float ``margin``); :func:`trim` cuts a collated batch
to its longest real row, so padding to ``seq_len`` costs nothing in compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from openqwen.train.tasks import Task

from .preferences import PreferencePair


@dataclass
class EncodedPair:
    prompt: list[int]
    chosen: list[int]
    """The chosen reply's tokens, ``<|im_end|>`` included (the prompt not)."""
    rejected: list[int]
    margin: float = 0.0


def prompt_ids(tokenizer: Any, messages: Sequence[dict]) -> list[int]:
    """ChatML ids of ``messages`` ending with the assistant generation prompt."""
    return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True))


def reply_ids(tokenizer: Any, reply: str) -> list[int]:
    """The reply's tokens and the ``<|im_end|>`` that ends the assistant turn."""
    return list(tokenizer.encode(reply)) + [tokenizer.im_end_id]


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer: Any, max_len: int) -> tuple[list[EncodedPair], int]:
    """Encode ``pairs``; a pair whose prompt plus either reply exceeds ``max_len`` tokens is dropped
    and counted (second value), as truncation would cut off the token the reward is read at."""
    out, dropped = [], 0
    for pair in pairs:
        prompt = prompt_ids(tokenizer, pair.messages)
        chosen, rejected = reply_ids(tokenizer, pair.chosen), reply_ids(tokenizer, pair.rejected)
        if len(prompt) + max(len(chosen), len(rejected)) > max_len:
            dropped += 1
            continue
        out.append(EncodedPair(prompt, chosen, rejected, pair.margin))
    return out, dropped


def pad_rows(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
             left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` [B, length] of token lists, padded right (or left)."""
    length = length or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s) > length:
            raise ValueError(f"a sequence of {len(s)} tokens does not fit rows of {length}")
        span = slice(length - len(s), length) if left else slice(0, len(s))
        ids[i, span] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class PairRows:
    """Encoded pairs as rows of ``seq_len`` tokens per side (see the module doc)."""

    def __init__(self, pairs: Sequence[EncodedPair], seq_len: int, pad_id: int) -> None:
        if not pairs:
            raise ValueError("no preference pairs fit the sequence length")
        self.pairs, self.seq_len, self.pad_id = list(pairs), seq_len, pad_id

    def __len__(self) -> int:
        return len(self.pairs)

    def _side(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        row = np.full(self.seq_len, self.pad_id, np.int64)
        mask = np.zeros(self.seq_len, np.int64)
        row[: len(ids)], mask[: len(ids)] = ids, 1
        return row, mask

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        p = self.pairs[int(i)]
        chosen_ids, chosen_mask = self._side(p.prompt + p.chosen)
        rejected_ids, rejected_mask = self._side(p.prompt + p.rejected)
        return {"chosen_ids": chosen_ids, "chosen_mask": chosen_mask, "rejected_ids": rejected_ids,
                "rejected_mask": rejected_mask, "prompt_len": np.int64(len(p.prompt)),
                "margin": np.float32(p.margin)}


def trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch cut to its longest real row (right padding beyond it changes nothing)."""
    real = (batch["chosen_mask"] | batch["rejected_mask"]).any(0)
    length = int(real.nonzero().max()) + 1 if bool(real.any()) else 1
    return {k: (v[:, :length] if v.dim() == 2 else v) for k, v in batch.items()}


def both_sides(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows then rejected rows as one [2B, T] batch (one forward for both sides)."""
    return (torch.cat([batch["chosen_ids"], batch["rejected_ids"]]),
            torch.cat([batch["chosen_mask"], batch["rejected_mask"]]))


class PairTask(Task):
    """What the pairwise tasks (reward model, DPO) share: a pair is the unit of loss, and the tokens
    processed are both sides' real tokens."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["chosen_ids"].shape[0])

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["chosen_mask"].sum() + batch["rejected_mask"].sum())

    def flops(self, config: Any, batch: dict[str, torch.Tensor]) -> float:
        return config.flops_per_token(int(batch["chosen_ids"].shape[-1])) * self.tokens(batch)
