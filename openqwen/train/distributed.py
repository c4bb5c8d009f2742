"""Process groups and the two ways to spread a model over them: FSDP2 and DDP.

The same entry point runs single-process or under ``torchrun``: when ``WORLD_SIZE`` > 1 is in the
environment a process group is created (NCCL on GPUs, gloo on CPUs). Parallelism is applied from
outside the model:

- FSDP2 (``fully_shard``): every transformer block is its own shard unit, then the root (embedding,
  final norm, head). Parameters become DTensors sharded over the ranks; gradients are reduce-scattered.
- DDP: full replicas, gradients all-reduced.

A task's own modules (a reward head, a value model) are wrapped the same way, each on its own: a
module with ``layers`` (another Qwen) is sharded block by block, anything else as one unit.

Both average gradients over ranks; the loop scales its loss so the result equals the gradient of
the token-weighted mean over the global batch, i.e. the single-process gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op when alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def resolve_parallel(mode: str, info: DistInfo) -> str:
    if mode not in ("auto", "fsdp", "ddp", "none"):
        raise ValueError(f"train.parallel must be auto, fsdp, ddp or none, got {mode!r}")
    if mode == "auto":
        return "fsdp" if info.enabled else "none"
    if mode == "none" and info.enabled:
        raise ValueError("train.parallel=none with several processes would train unsynchronised replicas; "
                         "use fsdp or ddp")
    return mode


def apply_parallel(model: nn.Module, mode: str, info: DistInfo) -> nn.Module:
    """Wrap ``model`` for ``mode`` (``fsdp``, ``ddp`` or ``none``); returns the module to call."""
    if mode == "none":
        return model
    if not dist.is_initialized():
        # a single process may still ask for fsdp/ddp (e.g. torchrun --nproc 1 on a GPU)
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(backend="nccl" if info.device.type == "cuda" else "gloo",
                                rank=0, world_size=1)
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(info.device.type, (dist.get_world_size(),))
    for block in getattr(model, "layers", ()):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if hasattr(model, "hidden_states"):  # reward/value heads call it instead of forward: gather there too
        from torch.distributed.fsdp import register_fsdp_forward_method

        register_fsdp_forward_method(model, "hidden_states")
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under a DDP wrapper (FSDP2 modifies the model in place, so it is the model)."""
    return getattr(model, "module", model)


def all_reduce_sums(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sums over the ranks, in one collective (float64); alone, ``values`` as given."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor([float(x) for x in values], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_sum(x: float | int, info: DistInfo) -> float | int:
    """The sum of one number over the ranks (:func:`all_reduce_sums` of one value)."""
    return all_reduce_sums([x], info)[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
