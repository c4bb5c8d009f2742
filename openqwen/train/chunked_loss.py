"""Next-token cross-entropy fused with the output projection, chunk by chunk.

The plain loss materialises the logits of every position ([N, vocab], then an fp32 copy, the
log-softmax, and in the backward pass as many gradient buffers again): with a 152K vocabulary that
is most of a step's memory traffic, and even at the nano sizes (vocabulary 4096, d 128) the head
and its softmax take a quarter of a CPU step. :func:`linear_cross_entropy` never holds more than
``chunk_rows`` rows of logits: for each chunk of positions it computes the logits, their softmax
(one fused pass), the loss, and - while the chunk is still in cache - the gradient of the loss with
respect to the hidden states and the head weight (softmax minus one-hot, two matmuls). The backward
pass only scales those stored gradients by the incoming gradient, so the step does the same three
matmuls as the plain loss and none of the [N, vocab] passes in between.

Positions whose target is ``ignore_index`` (SFT prompts, padding) are dropped before the head runs,
so they cost nothing (the plain loss computes and discards their logits).

The result equals ``F.cross_entropy(hidden @ weight.T, targets, reduction="sum")`` up to the
summation order of fp32 (tests/train/test_train_loss_chunked.py checks loss and gradients).
"""

from __future__ import annotations

import torch
from torch import nn

from .cpu_matmul import matmul_nt

DEFAULT_CHUNK_ROWS = 1024
"""Positions per chunk: large enough for efficient matmuls, small enough that a chunk's logits
(``chunk_rows x vocab`` fp32: 16 MiB at vocabulary 4096, 600 MiB at 152K) stay far below the full
[N, vocab] tensor. ``benchmarks/bench_train.py`` measures the step; 256-2048 measured alike on CPU."""


def _compute_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The matmul dtype autocast would use here (bf16 under bf16 autocast), else the input's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype


def _chunk_loss(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, onednn: bool) -> torch.Tensor:
    """Summed loss of one chunk without gradients (evaluation): log-sum-exp minus the target logit."""
    logits = matmul_nt(h, w, onednn)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
    picked = logits.gather(1, t[:, None]).squeeze(1)
    return (torch.logsumexp(logits, dim=-1) - picked).sum()


def _chunk_loss_and_grad(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor,
                         onednn: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of one chunk and d loss / d logits (softmax minus one-hot), in the logits' buffer.

    One fused softmax pass instead of log-sum-exp, subtract and exp (three passes over the chunk, the
    exp twice): the loss is -log p of each target, except where that probability underflows (a loss
    past ~70 nats in fp32), whose rows take log-sum-exp minus the target logit exactly."""
    logits = matmul_nt(h, w, onednn)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> fp32, fp64 stays
    probs = torch.softmax(logits, dim=-1)
    rows = torch.arange(t.shape[0], device=t.device)
    picked = probs[rows, t]
    losses = -torch.log(picked)
    low = picked < torch.finfo(picked.dtype).tiny ** 0.75
    if bool(low.any()):  # a host sync per chunk: free on CPU, one wait per chunk on a GPU
        idx = low.nonzero().squeeze(1)
        losses[idx] = torch.logsumexp(logits[idx], dim=-1) - logits[idx, t[idx]]
    probs[rows, t] -= 1.0
    return losses.sum(), probs


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int,
                compute_dtype: torch.dtype, onednn: bool) -> torch.Tensor:
        w = weight.to(compute_dtype)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if want_h else None
        acc = torch.promote_types(compute_dtype, torch.float32)
        grad_w = torch.zeros_like(weight, dtype=acc) if want_w else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_rows):
                h = hidden[start : start + chunk_rows].to(compute_dtype)
                t = targets[start : start + chunk_rows]
                loss, probs = _chunk_loss_and_grad(h, w, t, onednn)
                total += loss
                g = probs.to(compute_dtype)
                if want_h:
                    grad_h[start : start + chunk_rows] = matmul_nt(g, w.t(), onednn)  # g @ w
                if want_w:
                    if compute_dtype == acc:
                        grad_w.addmm_(g.t(), h)
                    else:
                        grad_w += (g.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         ignore_index: int = -100, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                         onednn: bool = False) -> torch.Tensor:
    """``sum`` over positions of ``cross_entropy(hidden @ weight.T, targets)``, skipping ``ignore_index``.

    hidden: [..., d] final hidden states; weight: [vocab, d] the output projection (no bias); targets:
    [...] token ids. Logits are computed in fp32 log-softmax from matmuls in the autocast dtype (bf16
    under bf16 autocast), like the plain loss under autocast. ``onednn``: the fp32 products on oneDNN
    (:mod:`openqwen.train.cpu_matmul`, as the head's own forward when the trainer chose it). Returns a
    0-dim fp32 tensor.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden states but {targets.shape[0]} targets")
    keep = targets != ignore_index
    if not bool(keep.all()):  # labelled positions only: the head never runs on masked ones
        idx = keep.nonzero().squeeze(1)
        hidden, targets = hidden.index_select(0, idx), targets.index_select(0, idx)
    if hidden.shape[0] == 0:
        return hidden.sum(dtype=torch.float32) * 0.0 + weight.sum(dtype=torch.float32) * 0.0
    dtype = _compute_dtype(hidden.device, hidden.dtype)
    if not torch.is_grad_enabled() or not (hidden.requires_grad or weight.requires_grad):
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(dtype)
            return sum(_chunk_loss(hidden[s : s + chunk_rows].to(dtype), w, targets[s : s + chunk_rows], onednn)
                       for s in range(0, hidden.shape[0], chunk_rows))
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_rows, dtype, onednn)


def output_weight(model: nn.Module) -> torch.Tensor | None:
    """The output projection's weight when ``model`` can run :func:`linear_cross_entropy` itself: a
    plain (or regionally compiled) model whose head is a bias-free linear. None under a DDP wrapper
    (only its ``forward`` synchronises gradients), FSDP (the head's weight is a sharded DTensor
    outside the model's forward) or a whole-model ``torch.compile`` wrapper: those take the plain loss."""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, nn.Linear) or head.bias is not None or hasattr(model, "_orig_mod"):
        return None
    if type(head.weight).__name__ == "DTensor" or type(model).__name__.startswith("FSDP"):
        return None
    return head.weight
