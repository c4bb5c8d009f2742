"""One block of memory for the weights a decode step streams, laid out in the order the step reads them.

A batch-1 decode step reads every weight once, so its speed is the memory's read bandwidth over the
bytes. Loaded layer by layer, those bytes lie in some 360 separate allocations in 4 KB pages: each
matrix starts a new stream for the hardware prefetchers, and every 4 KB costs a TLB miss (a
two-dimensional page walk in a virtual machine). :func:`pack_decode_weights` copies them into one
anonymous mapping aligned to 2 MB, in the order of :func:`decode_order`, backs it with transparent huge
pages once written (:func:`advise_huge_pages`; elsewhere than Linux the layout alone), and points the
modules at views of it. Values, dtypes and shapes are unchanged, so every path (the fused C step,
torch's reference, ``state_dict``) reads the same numbers. On the 2-core Zen 4 EPYC VM
(docs/benchmarks/inference.md, "One block of memory for the weights"): a plain read of the int4
model's layer weights went from 28.5 GB/s to 31.5 packed and 32.3 on huge pages, and whole int4 decode
steps 1.08x.

For inference only (:func:`~openqwen.infer.loading.load_for_inference` calls it): the tensors become
views of one buffer, which a trainer's optimizer or a sharding wrapper should not be handed.
"""

from __future__ import annotations

import atexit
import ctypes
import sys
import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ..kv_cache import anonymous_map, packed_offsets

ALIGN = 64  # bytes: every tensor starts on a cache line
HUGE_PAGE = 2 << 20
MADV_HUGEPAGE, MADV_COLLAPSE = 14, 25  # Linux's <asm-generic/mman-common.h>


@dataclass
class PackedWeights:
    """What :func:`pack_decode_weights` did: ``tensors`` moved, ``nbytes`` of them, and the huge-page
    advice it gave (the OS may still have found no free huge pages)."""

    tensors: int
    nbytes: int
    buffer: torch.Tensor | None = None  # the block itself (uint8); the modules hold views of it
    collapsing: "HugePageAdvice | None" = None  # the background advice, if any

    @property
    def huge_pages(self) -> bool:
        """Whether the OS took the huge-page advice (waits for the background thread to finish)."""
        if self.collapsing is None:
            return False
        self.collapsing.join()
        return self.collapsing.result


def _tensors_of(module: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """The module's own parameters and buffers (not its children's), in registration order."""
    own = [(module, n, t) for n, t in module._parameters.items() if t is not None]
    return own + [(module, n, t) for n, t in module._buffers.items() if t is not None]


def decode_order(model: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
    """(module, name, tensor) of every weight a decode step of :class:`openqwen.model.Qwen` reads, in the
    order it reads them: per layer the input norm, qkv, o, the post-attention norm, gate_up and down;
    then the final norm and the output head. The input embedding is left where it is (a step reads
    one row of it). A tensor shared by two modules (a tied head) appears once."""
    parts: list[nn.Module] = []
    for block in model.layers:
        parts += [block.input_layernorm, block.self_attn.qkv_proj, block.self_attn.o_proj,
                  block.post_attention_layernorm, block.mlp.gate_up_proj, block.mlp.down_proj]
    parts += [model.norm, model.lm_head]
    seen: set[int] = set()
    order = []
    for part in parts:
        for mod, name, t in _tensors_of(part):
            if id(t) not in seen and t.device.type == "cpu":
                seen.add(id(t))
                order.append((mod, name, t))
    return order


def anonymous_block(nbytes: int) -> torch.Tensor:
    """A zero-filled uint8 tensor of ``nbytes`` on its own private anonymous map, starting on a 2 MB
    boundary (so :func:`advise_huge_pages` can back all of it with huge pages)."""
    return anonymous_map(nbytes, start_align=HUGE_PAGE)


def _madvise():
    """libc's madvise through ctypes (Linux only), or None."""
    if sys.platform != "linux":
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def advise_huge_pages(block: torch.Tensor) -> bool:
    """Back ``block`` (a contiguous tensor on a map of :func:`anonymous_block`, already written) with
    transparent huge pages: Linux 6.1+'s ``MADV_COLLAPSE`` does it at once, else ``MADV_HUGEPAGE`` leaves
    it to the kernel's khugepaged. After the copy, not before: faulting an empty block in huge pages cost
    0.47 s for 400 MB on the Zen 4 VM, collapsing a written one 0.28-0.93 s (the kernel compacts memory
    to find free 2 MB pages; the time depends on how fragmented it is), against 0.10 s for the copy.
    Works through the block in 64 MB pieces, stopping early when the interpreter exits. Returns whether
    the OS took the advice (off Linux: False, the layout alone)."""
    madvise = _madvise()
    nbytes = block.numel() * block.element_size()
    if madvise is None or nbytes < HUGE_PAGE:
        return False
    start, length = block.data_ptr(), nbytes // HUGE_PAGE * HUGE_PAGE
    piece = 32 * HUGE_PAGE
    ok = True
    for off in range(0, length, piece):
        if _exiting.is_set():  # the interpreter is shutting down: stop between pieces
            return False
        n = min(piece, length - off)
        ok &= any(madvise(start + off, n, advice) == 0 for advice in (MADV_COLLAPSE, MADV_HUGEPAGE))
    return ok


class HugePageAdvice(threading.Thread):
    """:func:`advise_huge_pages` in a daemon thread (ctypes lets go of the GIL), so a load does not wait
    for the collapse: the model runs on 4 KB pages meanwhile, and the values never change under it.
    ``result``: what :func:`advise_huge_pages` returned, once the thread has ended."""

    def __init__(self, block: torch.Tensor) -> None:
        super().__init__(name="openqwen-huge-pages", daemon=True)
        self.block: torch.Tensor | None = block  # holds the map until the kernel is done with it
        self.result = False
        _threads.add(self)

    def run(self) -> None:
        self.result = advise_huge_pages(self.block)
        self.block = None


# A daemon thread still inside madvise when the interpreter finalises is torn down mid-call (the process
# then aborts): at exit the threads stop after their current 64 MB piece and are joined.
_threads: "weakref.WeakSet[HugePageAdvice]" = weakref.WeakSet()
_exiting = threading.Event()


@atexit.register
def _stop_collapsing() -> None:
    _exiting.set()
    for thread in list(_threads):
        thread.join()


def pack_decode_weights(model: nn.Module, huge_pages: bool = True) -> PackedWeights:
    """Move the weights of :func:`decode_order` into one block, in that order (see the module docstring),
    then start a :class:`HugePageAdvice` on it (``huge_pages``). Every module that held a weight (a tied
    embedding included) holds its view afterwards. Each weight is rebound as soon as it is copied, so its
    old allocation is freed before the next is copied: the load's peak grows by one weight, not by a
    second model. Returns what was moved."""
    order = decode_order(model)
    if not order:
        return PackedWeights(0, 0)
    offsets, total = packed_offsets([t.numel() * t.element_size() for _, _, t in order], ALIGN)
    holders: dict[int, list[tuple[nn.Module, str]]] = {}  # every module slot that holds each weight
    for mod in model.modules():
        for name, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is not None:
                holders.setdefault(id(t), []).append((mod, name))
    block = anonymous_block(total)
    for i, off in enumerate(offsets):
        t = order[i][2]
        order[i] = None  # the list must not keep the old tensor alive
        view = block[off:off + t.numel() * t.element_size()].view(t.dtype).view(t.shape)
        view.copy_(t.detach())
        if isinstance(t, nn.Parameter):
            t.data = view  # the same Parameter object everywhere: its holders and requires_grad stay
        else:
            for mod, name in holders[id(t)]:
                mod._buffers[name] = view
        del t
    collapsing = HugePageAdvice(block) if huge_pages else None
    if collapsing is not None:
        collapsing.start()
    return PackedWeights(len(offsets), total, block, collapsing)
