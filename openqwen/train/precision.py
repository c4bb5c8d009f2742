"""Which precision a run trains in when the config says ``auto``: a hardware check at start.

bf16 autocast pays where matmuls run natively in bf16: any CUDA GPU that supports it, and CPUs
with AMX-BF16 or AVX512-BF16 (Sapphire Rapids and later, Zen 4 and later). On other CPUs (AVX2, or
AVX-512 without the BF16 extension) oneDNN emulates bf16 and a step ran at 0.14x fp32's speed, so
``auto`` picks fp32 there. On a native-bf16 CPU autocast still pays a cast per matmul input: measured
on an AVX512-BF16 EPYC (docs/benchmarks/train.md), the demo's nano steps (2-39 GFLOP) ran 1.2-1.7x
faster in bf16, while toy steps under a GFLOP (a 64-wide model on 256 tokens) ran 0.8-0.9x. So on CPU
``auto`` also asks for a step of at least :data:`CPU_BF16_MIN_STEP_FLOPS`. The choice and its reason
are printed by the trainer.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from openqwen.config import QwenConfig

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of native bf16 matmuls on x86 CPUs."""

CPU_BF16_MIN_STEP_FLOPS = 1e9
"""Training FLOPs per micro-batch below which bf16 autocast on a native-bf16 CPU lost to fp32
(0.86 GFLOP: 0.91x; 2.1 GFLOP: 1.22x; one thread, 2026-12-02)."""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere), read once."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def step_flops(config: QwenConfig, batch_size: int, seq_len: int | None = None) -> float:
    """Training FLOPs (forward + backward) of one micro-batch of ``batch_size`` rows of ``seq_len``
    tokens (default: the config's full ``seq_length``)."""
    seq = config.seq_length if seq_len is None else seq_len
    return config.flops_per_token(seq) * batch_size * seq


def resolve_precision(requested: str, device: torch.device, flops: float | None = None) -> tuple[str, str]:
    """``(precision, reason)``: ``fp32``/``bf16`` as requested, or what ``auto`` picks on ``device`` for a
    micro-batch of ``flops`` training FLOPs (``None``: size not known, judged by the hardware alone)."""
    if requested not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {requested!r}")
    if requested != "auto":
        return requested, "as configured"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {torch.cuda.get_device_name(device)} runs bf16 natively"
        return "fp32", f"auto: {torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        native = "/".join(f for f in BF16_CPU_FLAGS if f in cpu_flags())
        if not native:
            return "fp32", "auto: this CPU has no AMX-BF16/AVX512-BF16, so bf16 would be emulated and slower"
        if flops is None:
            return "bf16", f"auto: this CPU has {native}, native bf16 matmuls"
        size = f"a step of {flops / 1e9:.2g} GFLOP"
        if flops < CPU_BF16_MIN_STEP_FLOPS:
            return "fp32", (f"auto: this CPU has {native}, but at {size} autocast's casts cost more than "
                            f"bf16 matmuls save (bf16 pays from {CPU_BF16_MIN_STEP_FLOPS / 1e9:.0f} GFLOP)")
        return "bf16", (f"auto: this CPU has {native}, native bf16 matmuls, faster than fp32 at {size} "
                        f"(from {CPU_BF16_MIN_STEP_FLOPS / 1e9:.0f} GFLOP)")
    return "fp32", f"auto: no bf16 check for device {device.type}"
