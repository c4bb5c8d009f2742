"""Training objectives ("tasks") that plug into the one loop.

The loop knows nothing about what is being learnt. Per micro-batch it asks the task for

- ``count(batch)``: the units (tokens, pairs, sequences ...) that carry loss;
- ``loss(model, batch, modules)``: the *summed* loss over those units and metrics. The loop
  divides the loss by the count over the whole optimiser step (all micro-batches, all ranks), so
  every unit weighs the same however the units fall into micro-batches or ranks;
- ``tokens(batch)`` and ``flops(config, batch)``: the tokens the model processes and their training
  FLOPs, for throughput and MFU (by default every position of ``input_ids``);
- ``modules()``: modules the task trains besides the model (a reward head, a value model). The loop
  moves them to the device, wraps them like the model (FSDP/DDP), optimises, checkpoints and exports
  them, and hands the wrapped ones back to ``loss`` as ``modules`` (call those, not your own
  references: under DDP only the wrapper synchronises gradients).

Metrics: ``loss`` returns ``{name: value}``. A plain value is a sum over the micro-batch's units like
the loss (reported divided by the step's units); a pair ``(sum, count)`` is reported as the step's
total sum over its total count (e.g. accuracy over pairs when the units are tokens). Every rank must
return the same names.

Pretraining and SFT are one task (:class:`NextTokenTask`: next-token loss on labelled tokens; SFT
labels only assistant tokens).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from openqwen.config import QwenConfig

from .batches import IGNORE_INDEX
from .chunked_loss import linear_cross_entropy, output_weight
from .cpu_matmul import runs_on_onednn

Metrics = dict[str, "float | torch.Tensor | tuple[float | torch.Tensor, float | torch.Tensor]"]


class Task:
    """Base class of the objectives: subclasses implement ``count`` and ``loss``; the rest has defaults."""

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Units (tokens, pairs ...) in ``batch`` that carry loss."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             modules: Mapping[str, nn.Module] | None = None) -> tuple[torch.Tensor, Metrics]:
        """Summed loss over the units of ``batch`` (a scalar with grad) and metrics (see the module doc)."""
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """Modules trained with the model, by name (exported as ``modules/<name>.safetensors``)."""
        return {}

    def lr_scale(self, name: str) -> float:
        """Factor on the scheduled learning rate for the model (``name == "model"``) or the task module
        ``name``; 1 by default (PPO's value model learns at its own rate, the report's 5e-6 vs 1e-6)."""
        return 1.0

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the model processes for ``batch`` (throughput)."""
        return int(batch["input_ids"].numel())

    def flops(self, config: QwenConfig, batch: dict[str, torch.Tensor]) -> float:
        """Training FLOPs (forward and backward) of ``batch`` (MFU): the model's, by default; a task
        whose modules cost as much (a value model) adds theirs."""
        return config.flops_per_token(int(batch["input_ids"].shape[-1])) * self.tokens(batch)


def final_hidden_states(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's final-norm hidden states [B, T, hidden] for ``batch`` (what reward and value heads
    read), through whatever wraps the model. FSDP gathers for ``hidden_states`` itself (see
    :mod:`.distributed`); DDP synchronises only what runs through its ``forward``, so there the full
    forward runs, the hidden states are caught at the final norm and the head's output joins the
    graph with weight zero (every parameter then gets its gradient and is reduced)."""
    kwargs = {"positions": batch.get("positions"), "segment_ids": batch.get("segment_ids")}
    inner = getattr(model, "module", None)
    if inner is None:  # plain, FSDP or compiled (which forwards the attribute to the original)
        return model.hidden_states(batch["input_ids"], **kwargs)
    caught: list[torch.Tensor] = []
    hook = inner.norm.register_forward_hook(lambda _m, _args, out: caught.append(out))
    try:
        logits = model(batch["input_ids"], **kwargs)
    finally:
        hook.remove()
    return caught[-1] + 0.0 * logits.sum()


class NextTokenTask(Task):
    """Causal LM loss: the token at t predicts ``labels`` at t+1; ``IGNORE_INDEX`` labels are skipped.

    Packed batches may carry ``positions`` (restarting at 0 in each segment) and ``segment_ids``
    (attention kept inside each segment); both are passed through to the model.
    """

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             modules: Mapping[str, nn.Module] | None = None) -> tuple[torch.Tensor, Metrics]:
        return next_token_loss(model, batch), {}


def next_token_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The summed next-token cross-entropy of ``batch`` (``labels`` at t+1 from the logits at t,
    ``IGNORE_INDEX`` skipped; ``positions`` and ``segment_ids`` passed through). A plain or regionally
    compiled model goes through :func:`~.chunked_loss.linear_cross_entropy` (no [N, vocab] logits, the
    head only on labelled positions); a DDP/FSDP/whole-model-compile wrapper through its ``forward``
    and the plain loss. Log-softmax in fp32 either way, also under bf16 autocast."""
    kwargs = {"positions": batch.get("positions"), "segment_ids": batch.get("segment_ids")}
    targets = batch["labels"][:, 1:]
    weight = output_weight(model)
    if weight is not None:
        hidden = model.hidden_states(batch["input_ids"], **kwargs)
        return linear_cross_entropy(hidden[:, :-1], weight, targets, ignore_index=IGNORE_INDEX,
                                    onednn=runs_on_onednn(model.lm_head))
    logits = model(batch["input_ids"], **kwargs)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum")
