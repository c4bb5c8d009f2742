"""GPTQ: weight-only int4 / int8 quantisation that corrects each rounding error with the weights not yet rounded.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ (Frantar et al., 2022) rounds the input
columns of a linear layer one at a time and, after each, moves the error it made onto the columns
still to come, in the proportions that minimise the layer's output error on real inputs:
``|| X W^T - X Q^T ||^2`` over a calibration set, whose only statistic is the Hessian
``H = 2 X^T X / n`` of the inputs each layer sees. With the inverse Hessian's upper Cholesky factor
``U`` (``H^-1 = U^T U``), rounding column j with error ``e = (w_j - q_j) / U_jj`` updates the columns
after it by ``-e * U_j,j+1:``; blocks of columns are updated lazily (one matrix product per block).

The grid is the one the kernels read (:class:`QuantFormat`): groups of ``group_size`` inputs along a
row, each with a scale and a zero point, ``w = (q - zero) * scale``:

* int4, symmetric (the default, as Qwen's own GPTQ-Int4 release): zero 8, and the scale of each group
  is its largest-magnitude weight divided by -8, so that weight is exact and all 16 levels are used
  (GGUF's Q4_0 grid, which is what lets a group-32 result be written as Q4_0 blocks exactly);
* int4, asymmetric: scale (max - min) / 15 over a range that includes 0, integer zero point 1..15;
* int8: one group per row, zero 128, scale absmax / 127: exactly :class:`~openqwen.infer.quant.Int8Linear`'s
  grid (and GGUF's Q8_0 with that scale in every block).

Scales are rounded to fp16 before rounding the weights, so the fp16 scales of the GPTQ checkpoint
layout (:mod:`openqwen.infer.gptq_format`) hold them exactly and a written checkpoint loads back to
the same numbers.

Calibration (:func:`calibrate`) is sequential, block by block, as in the paper: each block's linears
collect their Hessians from the outputs of the blocks already quantised, are quantised, and the
block is run again to give the next block its inputs. The output head stays in float (as GPTQ
releases leave it; with tied embeddings it is the embedding table).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

METHODS = ("gptq", "rtn")


@dataclass(frozen=True)
class QuantFormat:
    """The grid: ``bits`` 4 or 8; ``group_size`` inputs per scale for int4 (int8 is always per row);
    ``symmetric``: zero point fixed at the middle (int4 only: int8 is symmetric)."""

    bits: int = 4
    group_size: int = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.bits == 4 and (self.group_size < 32 or self.group_size & (self.group_size - 1)):
            raise ValueError(f"group_size must be a power of two >= 32 for int4 (32, 64, 128 ...), got {self.group_size}")
        if self.bits == 8 and not self.symmetric:
            raise ValueError("int8 is symmetric per row (the Int8Linear grid); drop the asymmetric option")

    @property
    def maxq(self) -> int:
        return (1 << self.bits) - 1

    def groups_of(self, in_features: int) -> int:
        """How many input columns share one scale in a layer of ``in_features`` inputs."""
        if self.bits == 8:
            return in_features
        if in_features % self.group_size:
            raise ValueError(f"a layer with {in_features} inputs does not divide into int4 groups of {self.group_size}; "
                             "choose a group size that divides every layer's input width")
        return self.group_size


@dataclass
class QuantizedWeight:
    """One layer's rounded weight: ``w[o, i] = (q[o, i] - zeros[o, i // group_size]) * scales[o, i // group_size]``."""

    q: torch.Tensor  # uint8 [out, in], 0 .. 2**bits - 1
    scales: torch.Tensor  # fp32 [out, in // group_size], fp16-representable
    zeros: torch.Tensor  # fp32 [out, in // group_size], whole numbers
    group_size: int
    bits: int

    def dequantize(self) -> torch.Tensor:
        g = self.group_size
        w = self.q.float().view(self.q.shape[0], -1, g) - self.zeros[:, :, None]
        return (w * self.scales[:, :, None]).reshape(self.q.shape)

    def rows(self, start: int, stop: int) -> "QuantizedWeight":
        """The output rows start..stop (a fused Q|K|V or gate|up layer splits into its parts by rows)."""
        return QuantizedWeight(self.q[start:stop], self.scales[start:stop], self.zeros[start:stop], self.group_size,
                               self.bits)


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).float()


def group_grid(w: torch.Tensor, fmt: QuantFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point [out] of each row of the group ``w`` [out, g] (see the module docstring)."""
    w = w.float()
    if fmt.bits == 8:
        scale = _fp16(w.abs().amax(1) / 127.0)
        zero = torch.full_like(scale, 128.0)
    elif fmt.symmetric:
        idx = w.abs().argmax(1, keepdim=True)
        scale = _fp16(w.gather(1, idx).squeeze(1) / -8.0)
        zero = torch.full_like(scale, 8.0)
    else:
        lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
        scale = _fp16((hi - lo) / fmt.maxq)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)
        # zero points from 1: the GPTQ layout stores them minus one (a 0 there cannot be written)
        zero = torch.round(-lo / scale).clamp(1, fmt.maxq)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero group: any scale rounds it to 0
    return scale, zero


def _round(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, maxq: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


@torch.no_grad()
def quantize_rtn(weight: torch.Tensor, fmt: QuantFormat) -> QuantizedWeight:
    """Round-to-nearest on the same grid GPTQ uses (the baseline GPTQ is measured against)."""
    w = weight.detach().float()
    out, cols = w.shape
    g = fmt.groups_of(cols)
    wg = w.view(out, cols // g, g)
    scale, zero = group_grid(wg.transpose(0, 1).reshape(-1, g), fmt)
    scale, zero = scale.view(cols // g, out).t(), zero.view(cols // g, out).t()
    q = _round(wg, scale[:, :, None], zero[:, :, None], fmt.maxq).reshape(out, cols)
    return QuantizedWeight(q.to(torch.uint8), scale.contiguous(), zero.contiguous(), g, fmt.bits)


def _inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1, raising the damping until H is positive definite."""
    mean_diag = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for attempt in range(6):
        try:
            lower = torch.linalg.cholesky(h + (damp * 10 ** attempt) * mean_diag * eye)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("the calibration Hessian stays singular even with heavy damping; give more calibration text")


@torch.no_grad()
def quantize_gptq(weight: torch.Tensor, hessian: torch.Tensor, fmt: QuantFormat, damp: float = 0.01,
                  block_size: int = 128) -> QuantizedWeight:
    """GPTQ-round ``weight`` [out, in] given the inputs' Hessian [in, in] (``2 X^T X / n``).

    damp: added to the Hessian's diagonal as a fraction of its mean (the paper's 1 %).
    Each group's grid is fixed when its first column comes up, from the weights as updated so far."""
    w = weight.detach().float().clone()
    out, cols = w.shape
    g = fmt.groups_of(cols)
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0  # inputs that were always 0: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    u = _inverse_hessian_factor(h, damp).float()
    q = torch.zeros(out, cols, dtype=torch.uint8)
    scales = torch.zeros(out, cols // g)
    zeros = torch.zeros(out, cols // g)
    block = max(block_size // g, 1) * g  # whole groups per block, so a group's grid sees its own updates
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        wb = w[:, b0:b1].clone()
        errors = torch.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for j in range(b1 - b0):
            col = b0 + j
            if col % g == 0:
                scale, zero = group_grid(wb[:, j : j + g], fmt)
                scales[:, col // g], zeros[:, col // g] = scale, zero
            qj = _round(wb[:, j], scale, zero, fmt.maxq)
            q[:, col] = qj.to(torch.uint8)
            err = (wb[:, j] - (qj - zero) * scale) / ub[j, j]
            wb[:, j:] -= err[:, None] * ub[j, j:][None, :]
            errors[:, j] = err
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    return QuantizedWeight(q, scales, zeros, g, fmt.bits)


class HessianCollector:
    """Accumulates ``H = 2 X^T X / n`` of a linear layer's inputs through a forward hook."""

    def __init__(self, layer: nn.Linear) -> None:
        self.h = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
        self.rows = 0
        self._hook = layer.register_forward_hook(self._add)

    def _add(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
        total = self.rows + x.shape[0]
        self.h.mul_(self.rows / total).add_(x.t() @ x, alpha=2.0 / total)
        self.rows = total

    def close(self) -> torch.Tensor:
        self._hook.remove()
        return self.h


class _Captured(Exception):
    """Raised by the capture hook to stop a forward at the first block."""


def _block_inputs(model: nn.Module, batches: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[list[tuple]]]:
    """For each batch: the first block's input x and, per block, the other arguments the model passes it
    (RoPE tables, mask, ...), taken from one real forward so nothing of the model's wiring is copied here."""
    xs: list[torch.Tensor] = []
    rests: list[list[tuple]] = []
    per_layer: list[tuple] = []

    def grab(index: int):
        def hook(module: nn.Module, args: tuple) -> None:
            if index == 0:
                xs.append(args[0].detach())
            per_layer.append(tuple(args[1:]))
            if index == len(model.layers) - 1:
                raise _Captured
        return hook

    handles = [layer.register_forward_pre_hook(grab(i)) for i, layer in enumerate(model.layers)]
    # the last block's hook stops the forward: one float pass through the other blocks reads every
    # block's arguments
    try:
        for ids in batches:
            per_layer = []
            try:
                model(ids)
            except _Captured:
                pass
            rests.append(per_layer)
    finally:
        for h in handles:
            h.remove()
    return xs, rests


@torch.no_grad()
def calibrate(model: nn.Module, samples: torch.Tensor, fmt: QuantFormat, method: str = "gptq", damp: float = 0.01,
              batch_size: int = 8, log: Callable[[str], None] | None = None) -> dict[str, QuantizedWeight]:
    """Quantise every linear of every block of ``model`` (a float :class:`openqwen.model.Qwen`) on the
    calibration token ids ``samples`` [N, T]; returns ``{module name: QuantizedWeight}``.

    The model's float weights are replaced, in place, by their dequantised values (so its outputs are
    the quantised model's); :func:`openqwen.infer.gptq_format.pack_model` then swaps in the int4/int8
    modules. ``method`` "rtn" rounds to nearest on the same grid (the samples are then unused)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    model.eval()
    results: dict[str, QuantizedWeight] = {}
    names = {mod: name for name, mod in model.named_modules()}
    if method == "rtn":
        for block in model.layers:
            for mod in block.modules():
                if isinstance(mod, nn.Linear):
                    results[names[mod]] = qw = quantize_rtn(mod.weight, fmt)
                    mod.weight.copy_(qw.dequantize().to(mod.weight.dtype))
        return results
    if samples.ndim != 2 or samples.shape[0] == 0:
        raise ValueError("calibration samples must be a non-empty [N, T] batch of token ids")
    batches = list(samples.split(batch_size))
    xs, rests = _block_inputs(model, batches)
    for i, block in enumerate(model.layers):
        linears = [(names[m], m) for m in block.modules() if isinstance(m, nn.Linear)]
        collectors = {name: HessianCollector(m) for name, m in linears}
        try:
            for x, rest in zip(xs, rests):
                block(x, *rest[i])
        finally:
            hessians = {name: c.close() for name, c in collectors.items()}
        for name, m in linears:
            results[name] = qw = quantize_gptq(m.weight, hessians[name], fmt, damp=damp)
            m.weight.copy_(qw.dequantize().to(m.weight.dtype))
        xs = [block(x, *rest[i]) for x, rest in zip(xs, rests)]
        if log:
            log(f"block {i + 1}/{len(model.layers)} quantised ({', '.join(n.rpartition('.')[2] for n, _ in linears)})")
    return results


def layer_output_error(weight: torch.Tensor, quantized: QuantizedWeight, inputs: torch.Tensor) -> float:
    """Relative output error ``|X W^T - X Q^T| / |X W^T|`` of a quantised layer on ``inputs`` [n, in]."""
    x = inputs.reshape(-1, inputs.shape[-1]).float()
    ref = x @ weight.float().t()
    return float(torch.linalg.norm(ref - x @ quantized.dequantize().t()) / torch.linalg.norm(ref).clamp(min=1e-30))


def bits_per_weight(fmt: QuantFormat) -> float:
    """Stored bits per weight in the GPTQ layout (fp16 scale + packed zero per group)."""
    if fmt.bits == 8:
        return 8.0
    return fmt.bits + (16 + fmt.bits) / fmt.group_size


__all__ = ["QuantFormat", "QuantizedWeight", "METHODS", "group_grid", "quantize_rtn", "quantize_gptq", "calibrate",
           "HessianCollector", "layer_output_error", "bits_per_weight"]
