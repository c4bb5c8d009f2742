"""One block of memory for the weights a decode step streams, laid out in the order the step reads them.

A batch-1 decode step reads every weight once, so its speed is the memory's read bandwidth over the
bytes. Loaded layer by layer, those bytes lie in a hundred separate allocations in 4 KB pages: each
matrix starts a new stream for the hardware prefetchers, and every 4 KB costs a TLB miss (two page-table
walks in a virtual machine). :func:`pack_decode_weights` copies them into one anonymous mapping, aligned
to 2 MB and advised for transparent huge pages (Linux's ``MADV_HUGEPAGE``; elsewhere the layout alone),
in the order of :func:`decode_order`, and points the modules at views of it. The values, dtypes and
shapes are unchanged, so every path (the fused C step, torch's reference, ``state_dict``) reads the
same numbers. Measured on a 2-core Zen 4 EPYC VM (docs/benchmarks/inference.md, "One block of memory
for the weights"): a plain read of the int4 model's layer weights went from 28.5 to 31.5 GB/s packed
and 32.3 GB/s on huge pages.

For inference only (:func:`~openqwen.infer.loading.load_for_inference` calls it): the tensors become
views of one buffer, which a trainer's optimizer or a sharding wrapper should not be handed.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import torch
from torch import nn

ALIGN = 64  # bytes: every tensor starts on a cache line
HUGE_PAGE = 2 << 20


@dataclass
class PackedWeights:
    """What :func:`pack_decode_weights` did: ``tensors`` moved, ``nbytes`` of them, ``huge_pages``:
    whether the block was advised for transparent huge pages (the kernel may still decline)."""

    tensors: int
    nbytes: int
    huge_pages: bool
    buffer: torch.Tensor | None = None  # the block itself (uint8); the modules hold views of it


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


def anonymous_block(nbytes: int, huge_pages: bool = True) -> tuple[torch.Tensor, bool]:
    """A zero-filled uint8 tensor of ``nbytes`` on its own anonymous mapping, starting on a 2 MB boundary,
    and whether the mapping was advised for transparent huge pages (``huge_pages`` and the OS allows)."""
    size = nbytes + HUGE_PAGE  # room to move the start to a boundary (the skipped head is never touched)
    block = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | getattr(mmap, "MAP_ANONYMOUS", 0x20))
    advised = False
    if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            block.madvise(mmap.MADV_HUGEPAGE)
            advised = True
        except OSError:  # a kernel built without transparent huge pages
            pass
    whole = torch.frombuffer(block, dtype=torch.uint8)  # keeps the mapping alive as long as a view lives
    start = -whole.data_ptr() % HUGE_PAGE
    return whole[start:start + nbytes], advised


def pack_decode_weights(model: nn.Module, huge_pages: bool = True) -> PackedWeights:
    """Move the weights of :func:`decode_order` into one block, in that order (see the module docstring).
    Every module that held one of them (a tied embedding included) holds the view afterwards; the old
    allocations are freed as their last reference goes. Returns what was moved."""
    order = decode_order(model)
    if not order:
        return PackedWeights(0, 0, False)
    offsets, total = [], 0
    for _, _, t in order:
        offsets.append(total)
        total += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
    block, advised = anonymous_block(total, huge_pages)
    moved: dict[int, torch.Tensor] = {}
    for (_, _, t), off in zip(order, offsets):
        nb = t.numel() * t.element_size()
        view = block[off:off + nb].view(t.dtype).view(t.shape)
        view.copy_(t.detach())
        moved[id(t)] = view
    for mod in model.modules():  # rebind every holder, so no module keeps an old copy alive
        for name, p in list(mod._parameters.items()):
            if p is not None and id(p) in moved:
                p.data = moved[id(p)]  # the same Parameter object: its holders and requires_grad stay
        for name, b in list(mod._buffers.items()):
            if b is not None and id(b) in moved:
                mod._buffers[name] = moved[id(b)]
    return PackedWeights(len(order), total, advised, block)
