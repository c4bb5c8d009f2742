"""Which library multiplies fp32 matrices in CPU training: MKL (torch's default) or oneDNN.

torch sends fp32 ``nn.Linear`` products on CPU to MKL's sgemm. MKL picks its fastest code paths by
the CPU's vendor string, and on AMD CPUs it does not run its AVX-512 kernels (``MKL_VERBOSE=1`` on the
AVX-512 EPYC below names its generic "Intel(R) Architecture processors" path, also with
``MKL_ENABLE_INSTRUCTIONS=AVX512``); oneDNN (shipped inside torch) picks its kernels by the instruction
set alone. Measured on a 2-core AMD EPYC with AVX-512
(one thread, the shapes of the benchmark's and the demo's steps, 2026-12-03): oneDNN ran the forward
product 1.1-1.7x and the input gradient 1.1-1.4x as fast as MKL; for the weight gradient
(``grad_y.T @ x``, both operands transposed) MKL stayed ahead, so that one stays on MKL.

``train.cpu_matmul`` (``auto``, ``mkl``, ``onednn``) chooses; ``auto`` takes oneDNN on CPUs whose
vendor is not GenuineIntel, for eager fp32 training without FSDP. :func:`use_onednn_linears` applies
the choice from outside the model: each ``nn.Linear`` forward is replaced in place by
:class:`OneDNNLinear` (state dict, names and hooks unchanged), and the head is marked so the chunked
loss (:mod:`openqwen.train.chunked_loss`) runs its own products on the same library. Non-fp32 or
non-CPU inputs take ``F.linear`` as before.
"""

from __future__ import annotations

import functools
import os
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .precision import BF16_CPU_FLAGS, cpu_flags

CHOICES = ("auto", "mkl", "onednn")
ONEDNN_ATTR = "_openqwen_onednn"
"""Set on every ``nn.Linear`` whose forward runs through oneDNN (read by the chunked loss)."""


@functools.lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """``vendor_id`` of /proc/cpuinfo (``GenuineIntel``, ``AuthenticAMD`` ...; empty where unknown)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


@functools.lru_cache(maxsize=1)
def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def resolve_cpu_matmul(requested: str, device: torch.device, precision: str, compiled: bool,
                       parallel: str) -> tuple[str, str]:
    """``(library, reason)`` for fp32 linear layers on ``device``; ``auto`` as the module docstring says.
    Raises ValueError for an unknown name or an ``onednn`` request it cannot honour."""
    if requested not in CHOICES:
        raise ValueError(f"train.cpu_matmul must be one of {', '.join(CHOICES)}, got {requested!r}")
    if requested == "mkl":
        return "mkl", "as configured"
    blockers = [why for cond, why in (
        (device.type != "cpu", f"the device is {device.type}"),
        (precision != "fp32", f"precision is {precision} (autocast picks bf16 kernels itself)"),
        (compiled, "train.compile is on (inductor chooses the kernels)"),
        (parallel == "fsdp", "FSDP shards the weights as DTensors"),
        (not onednn_available(), "this torch build has no oneDNN"),
    ) if cond]
    if requested == "onednn":
        if blockers:
            raise ValueError(f"train.cpu_matmul onednn applies to eager fp32 CPU training, but {blockers[0]}: "
                             "use train.cpu_matmul auto or mkl")
        return "onednn", "as configured"
    if blockers:
        return "mkl", f"auto: {blockers[0]}"
    vendor = cpu_vendor()
    if not onednn_preferred():
        return "mkl", f"auto: CPU vendor {vendor or 'unknown'}, where MKL runs its own fast paths"
    return "onednn", f"auto: CPU vendor {vendor}, where MKL skips its fastest kernels"


def onednn_preferred() -> bool:
    """Whether fp32 products on this CPU go faster through oneDNN than MKL (``auto``'s vendor rule);
    inference's long prefills follow it too (:mod:`openqwen.infer.quant`)."""
    return onednn_available() and cpu_vendor() not in ("GenuineIntel", "")


PREFILL_PRODUCTS = ("auto", "fp32", "bf16")
PREFILL_PRODUCTS_ENV = "OPENQWEN_PREFILL_PRODUCTS"


def bf16_products_preferred() -> bool:
    """Whether quantised layers multiply long prompts in bf16 (:mod:`openqwen.infer.quant`): the
    ``OPENQWEN_PREFILL_PRODUCTS`` environment variable, ``auto`` (default: bf16 where the CPU has native
    bf16 dot products, ``avx512_bf16`` or ``amx_bf16``, which run them about twice as fast as fp32),
    ``fp32`` or ``bf16``."""
    choice = os.environ.get(PREFILL_PRODUCTS_ENV, "auto") or "auto"
    if choice not in PREFILL_PRODUCTS:
        raise ValueError(f"{PREFILL_PRODUCTS_ENV} must be one of {', '.join(PREFILL_PRODUCTS)}, got {choice!r}")
    if choice != "auto":
        return choice == "bf16"
    return onednn_available() and bool(cpu_flags() & set(BF16_CPU_FLAGS))


def _onednn_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)`` for 2-D fp32 CPU tensors through oneDNN (``b`` may be a transposed view)."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


def matmul_nt(a: torch.Tensor, b: torch.Tensor, onednn: bool) -> torch.Tensor:
    """``a @ b.T``: through oneDNN when ``onednn`` and both are fp32 CPU matrices, else torch's mm."""
    if onednn and a.dtype == b.dtype == torch.float32 and a.device.type == "cpu" and a.dim() == b.dim() == 2:
        return _onednn_nt(a, b)
    return a @ b.t()


class OneDNNLinear(torch.autograd.Function):
    """``F.linear`` with the forward product and the input gradient on oneDNN, the weight gradient on
    MKL (faster there for ``grad_y.T @ x``). Saves what ``F.linear`` saves: the input and the weight."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = _onednn_nt(x.reshape(-1, x.shape[-1]), weight, bias)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_nt(g, weight.t()).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = g.t() @ x.reshape(-1, x.shape[-1])
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; fp32 CPU inputs through :class:`OneDNNLinear`."""
    if x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu"):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


def _onednn_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return onednn_linear(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Run every ``nn.Linear`` of ``model`` through oneDNN (in place); returns how many."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and not getattr(module, ONEDNN_ATTR, False):
            module.forward = types.MethodType(_onednn_forward, module)  # deepcopy rebinds a method
            setattr(module, ONEDNN_ATTR, True)
            count += 1
    return count


def apply_cpu_matmul(model: nn.Module, requested: str, device: torch.device, precision: str, compiled: bool,
                     parallel: str) -> tuple[str, str]:
    """Resolve ``train.cpu_matmul`` (:func:`resolve_cpu_matmul`) and, where it says oneDNN, swap ``model``'s
    linears (:func:`use_onednn_linears`); returns ``(library, reason)``. The trainer's one call."""
    library, why = resolve_cpu_matmul(requested, device, precision, compiled, parallel)
    if library == "onednn":
        use_onednn_linears(model)
    return library, why


def runs_on_onednn(module: nn.Module | None) -> bool:
    return bool(getattr(module, ONEDNN_ATTR, False))
