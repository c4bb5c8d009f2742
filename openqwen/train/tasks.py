"""Training objectives ("tasks") that plug into the one loop.

The loop knows nothing about what is being learnt: it asks a task for the number of units that
carry loss in a micro-batch (``count``) and for the *summed* loss of a micro-batch (``loss``). It
divides by the count over the whole optimiser step (all micro-batches, all ranks), so every token
weighs the same however the tokens fall into micro-batches or ranks. Pretraining and SFT are the
same task (next-token loss on labelled tokens; SFT labels only assistant tokens); a reward model
(pairwise loss on pooled end-token scores) or PPO (clipped policy/value losses on rollouts) are
further classes with the same two methods.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .batches import IGNORE_INDEX


class Task(Protocol):
    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Units (tokens, pairs ...) in ``batch`` that carry loss."""

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the units of ``batch`` (a scalar with grad) and extra metrics."""


class NextTokenTask:
    """Causal LM loss: the token at t predicts ``labels`` at t+1; ``IGNORE_INDEX`` labels are skipped.

    Packed batches may carry ``positions`` (restarting at 0 in each segment) and ``segment_ids``
    (attention kept inside each segment); both are passed through to the model.
    """

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["input_ids"], positions=batch.get("positions"), segment_ids=batch.get("segment_ids"))
        targets = batch["labels"][:, 1:]
        # fp32 log-softmax even under bf16 autocast: the loss is a sum over a large vocabulary
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                               ignore_index=IGNORE_INDEX, reduction="sum")
        return loss, {}
