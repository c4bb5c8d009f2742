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
    collapsing: threading.Thread | None = None  # the background advice of advise_huge_pages, if any

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


def advise_huge_pages(block: torch.Tensor, background: bool = False) -> threading.Thread | bool:
    """Back ``block`` (from :func:`anonymous_block`, already written) with transparent huge pages: Linux
    6.1+'s ``MADV_COLLAPSE`` does it at once, else ``MADV_HUGEPAGE`` leaves it to the kernel's
    khugepaged. After the copy, not before: faulting an empty block in huge pages cost 0.47 s for 400 MB
    on the Zen 4 VM, and collapsing a written one 0.28-0.93 s (the kernel compacts memory to find free
    2 MB pages; the time depends on how fragmented it is), against 0.10 s for the copy itself. So a
    load collapses in the ``background``: a thread (ctypes lets go of the GIL) works through the block
    in 64 MB pieces while the model already runs on 4 KB pages, and the values never change under it.
    Returns whether the OS took the advice, or with ``background`` the started thread (its ``result``
    attribute says the same once it ends). Off Linux, False: the layout alone."""
    madvise = _madvise()
    if madvise is None or block.numel() < HUGE_PAGE:
        return False
    start, length = block.data_ptr(), block.numel() // HUGE_PAGE * HUGE_PAGE
    piece = 32 * HUGE_PAGE

    def collapse() -> bool:
        ok = True
        for off in range(0, length, piece):
            if _exiting.is_set():  # the interpreter is shutting down: stop between pieces
                return False
            n = min(piece, length - off)
            ok &= any(madvise(start + off, n, advice) == 0 for advice in (MADV_COLLAPSE, MADV_HUGEPAGE))
        return ok

    if not background:
        return collapse()

    def run() -> None:
        thread.result = collapse()
        thread.block = None  # the block may go once the advice is given

    thread = threading.Thread(target=run, name="openqwen-huge-pages", daemon=True)
    thread.result, thread.block = False, block  # holds the mapping until the kernel is done with it
    _threads.add(thread)
    thread.start()
    return thread


# A daemon thread still inside madvise when the interpreter finalises is torn down mid-call (the process
# then aborts): at exit the threads stop after their current 64 MB piece and are joined.
_threads: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
_exiting = threading.Event()


@atexit.register
def _stop_collapsing() -> None:
    _exiting.set()
    for thread in list(_threads):
        thread.join()


def pack_decode_weights(model: nn.Module, huge_pages: bool = True) -> PackedWeights:
    """Move the weights of :func:`decode_order` into one block, in that order (see the module docstring).
    Every module that held one of them (a tied embedding included) holds the view afterwards; the old
    allocations are freed as their last reference goes. Returns what was moved."""
    order = decode_order(model)
    if not order:
        return PackedWeights(0, 0)
    offsets, total = packed_offsets([t.numel() * t.element_size() for _, _, t in order], ALIGN)
    block = anonymous_block(total)
    moved: dict[int, torch.Tensor] = {}
    for (_, _, t), off in zip(order, offsets):
        nb = t.numel() * t.element_size()
        view = block[off:off + nb].view(t.dtype).view(t.shape)
        view.copy_(t.detach())
        moved[id(t)] = view
    collapsing = advise_huge_pages(block, background=True) if huge_pages else None
    for mod in model.modules():  # rebind every holder, so no module keeps an old copy alive
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in moved:
                p.data = moved[id(p)]  # the same Parameter object: its holders and requires_grad stay
        for name, b in list(mod._buffers.items()):
            if b is not None and id(b) in moved:
                mod._buffers[name] = moved[id(b)]
    return PackedWeights(len(order), total, block, collapsing if isinstance(collapsing, threading.Thread) else None)
