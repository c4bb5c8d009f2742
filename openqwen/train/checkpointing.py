"""Resumable checkpoints: written atomically, the last N kept.

A checkpoint is a folder ``OUT/checkpoints/step_00000123/`` holding

- ``state.pt``: model and optimiser state (full, unsharded tensors, so any world size can resume
  from it), the same for each of the task's modules (``modules``: name -> model/optimizer state),
  the step, rank 0's batch-source state (``data``) and the config;
- ``rng_rank{R}.pt``: each rank's torch / numpy / python RNG states (dropout draws differ per rank);
- ``source_rank{R}.pt``: each rank's batch-source state (a generated source's stream differs per
  rank; a row stream's is the same on every rank, so ``data`` continues it on any world size).

It is written into ``step_00000123.tmp/`` and renamed when complete; a rename is atomic, so a
folder named ``step_*`` is always whole, and a kill in the middle of a save leaves only a ``.tmp``
folder, which the next start deletes. The learning-rate schedule is a function of the step and
needs no state.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import DistInfo, barrier

STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_dir(out_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(out_dir)
    return ckpts[-1] if ckpts else None


def remove_partial(out_dir: str | Path) -> None:
    """Delete folders left by a save that was killed before its rename."""
    root = checkpoint_dir(out_dir)
    if root.exists():
        for p in root.iterdir():
            if p.name.endswith(".tmp"):
                shutil.rmtree(p, ignore_errors=True)


def _options(cpu_offload: bool = True, strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload, strict=strict)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[dict, dict | None]:
    """Unsharded model (and optimiser) state, keyed by parameter names; collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return get_model_state_dict(model, options=_options()), None
    return get_state_dict(model, optimizer, options=_options())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _crash_point(where: str, step: int) -> None:
    """Test hook: ``OPENQWEN_CRASH_AT=save:STEP:WHERE`` SIGKILLs this process at that point of a save,
    so tests can check that a kill in the middle of a checkpoint loses nothing."""
    target = os.environ.get("OPENQWEN_CRASH_AT")
    if target and target == f"save:{step}:{where}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


Trained = dict[str, tuple[nn.Module, torch.optim.Optimizer]]
"""A task's modules by name, each with its optimiser."""


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], info: DistInfo, keep_last: int = 2, modules: Trained | None = None,
                    source_state: dict[str, Any] | None = None) -> Path:
    """Write checkpoint ``step`` atomically (collective: every rank calls it). ``source_state`` is this
    rank's batch-source state."""
    root = checkpoint_dir(out_dir)
    final = root / f"step_{step:08d}"
    tmp = root / (final.name + ".tmp")
    model_sd, optim_sd = full_state(model, optimizer)
    module_sd = {}
    for name, (module, module_optim) in (modules or {}).items():
        msd, osd = full_state(module, module_optim)
        module_sd[name] = {"model": msd, "optimizer": osd}
    if info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    _save_file(rng_state(), tmp / f"rng_rank{info.rank}.pt")
    if source_state is not None:
        _save_file(source_state, tmp / f"source_rank{info.rank}.pt")
    if info.is_main:
        _save_file({"model": model_sd, "optimizer": optim_sd, "modules": module_sd, "step": step, **extra},
                   tmp / "state.pt")
        _crash_point("before-rename", step)
    barrier()
    if info.is_main:
        _fsync_dir(tmp)
        if final.exists():  # a checkpoint of the same step from an earlier attempt
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for old in list_checkpoints(out_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _restore(module: nn.Module, optimizer: torch.optim.Optimizer | None, model_sd: dict, optim_sd: dict | None) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(module, model_sd, options=_options(cpu_offload=False))
    if optimizer is not None:
        # AdamW holds no state for a parameter that has had no gradient yet (a PPO policy in its
        # value-only warm-up); such a parameter is restored stateless, as it was saved
        set_optimizer_state_dict(module, optimizer, optim_sd, options=_options(cpu_offload=False, strict=False))


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    info: DistInfo, modules: Trained | None = None) -> dict[str, Any]:
    """Restore model, optimiser, the task's modules and this rank's RNG from ``path``; returns the rest
    of the state, with this rank's batch-source state as ``data`` (rank 0's when this rank has none)."""
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    saved_modules = state.get("modules", {})
    modules = modules or {}
    if set(saved_modules) != set(modules):
        raise ValueError(f"{path} holds the task modules {sorted(saved_modules) or 'none'}, this run trains "
                         f"{sorted(modules) or 'none'}: resume with the same task, or start in a new train.out_dir")
    _restore(model, optimizer, state["model"], state["optimizer"])
    for name, (module, module_optim) in modules.items():
        _restore(module, module_optim, saved_modules[name]["model"], saved_modules[name]["optimizer"])
    rng_file = path / f"rng_rank{info.rank}.pt"
    if rng_file.exists():
        set_rng_state(torch.load(rng_file, weights_only=False))
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer", "modules")}
    source_file = path / f"source_rank{info.rank}.pt"
    if source_file.exists():
        rest["data"] = torch.load(source_file, weights_only=False)
    return rest
