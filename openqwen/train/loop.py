"""The one training loop (pretraining, SFT; reward modelling and PPO plug in as tasks).

:class:`Trainer` owns what every stage shares: parallelism, precision, activation checkpointing,
compilation, AdamW and its schedule, gradient accumulation and clipping, checkpoints with exact
resume, validation and metrics. What is learnt is the :class:`~openqwen.train.tasks.Task`: it
returns a summed loss and the number of units it covers; the loop normalises by the units of the
whole step (all micro-batches, all ranks), so the update does not depend on how the global batch
is split. Where batches come from is a :class:`~openqwen.train.sources.BatchSource` (rows of a
dataset in a recomputable order, or batches made on the fly).

One optimiser step (:meth:`Trainer.train_step`; each part is a method a subclass may override)::

    lr <- schedule(step)                                 # every optimiser: model and task modules
    batches <- next_batches()                            # grad_accum micro-batches from the source
    for each batch:                                      # forward_backward(batch, scale, last)
        loss_sum, metrics <- task.loss(model, batch, modules)   # bf16 autocast when precision=bf16
        backward(loss_sum * world / units_in_step)
    optimizer_step(): clip the global grad norm to grad_clip; AdamW steps; zero grads
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from openqwen.config import QwenConfig
from openqwen.model import Qwen

from . import checkpointing as ckpt
from .batches import RowDataset, eval_batches
from .config import TrainConfig
from .cpu_matmul import apply_cpu_matmul
from .distributed import (DistInfo, all_reduce_sum, all_reduce_sums, apply_parallel, barrier, init_distributed,
                          resolve_parallel, unwrap)
from .export import export_model
from .metrics import MetricsLogger, measure_peak_flops, plot_loss_curves
from .optim import build_optimizer, lr_at
from .precision import resolve_precision, step_flops
from .sources import BatchSource, BatchStream
from .tasks import NextTokenTask, Task


# ------------------------------------------------------------------ model changes applied from outside
def set_dropout(model: Qwen, p: float) -> None:
    """Set the attention and residual dropout of every block (the model reads them at call time)."""
    for block in model.layers:
        block.self_attn.dropout = p
        block.dropout.p = p
    model.config.dropout = p


def apply_activation_checkpointing(model: Qwen) -> None:
    """Recompute every block's activations in the backward pass. The block's forward is wrapped in
    place, so parameter names (and checkpoints) do not change."""
    from torch.utils.checkpoint import checkpoint

    for block in model.layers:
        inner = block.forward

        @functools.wraps(inner)
        def forward(*args, _inner=inner, **kwargs):
            if not torch.is_grad_enabled():
                return _inner(*args, **kwargs)
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = forward


def compile_blocks(model: Qwen) -> None:
    """Regional compilation: ``torch.compile`` each transformer block in place (``nn.Module.compile``).
    The blocks share one code object, so dynamo compiles one graph and reuses it for every layer; the
    model stays a plain module (names, checkpoints, ``hidden_states`` and the chunked loss unchanged)."""
    for block in model.layers:
        block.compile()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


RECORD_KEYS = frozenset({"kind", "step", "loss", "lr", "grad_norm", "tokens", "units", "flops", "epoch",
                         "step_time_s", "tokens_per_s", "flops_per_s", "mfu"})
"""Keys of a step's record; a task's metric may not take one of these names."""


def is_batch_source(data: Any) -> bool:
    return callable(getattr(data, "next", None)) and callable(getattr(data, "state_dict", None))


def task_modules(task: Task, model: nn.Module) -> dict[str, nn.Module]:
    """The task's modules, checked: usable names, something to train, no parameter shared with the model
    or another module."""
    modules = dict(task.modules())
    taken = {id(p) for p in model.parameters()}
    for name, module in modules.items():
        if not name.isidentifier() or name == "model":
            raise ValueError(f"task module name {name!r}: use a Python identifier other than 'model' "
                             "(the module is exported as modules/<name>.safetensors)")
        if not any(p.requires_grad for p in module.parameters()):
            raise ValueError(f"task module {name!r} has no trainable parameters; task modules are trained, "
                             "keep frozen models (a PPO reference) on the task itself")
        if any(id(p) in taken for p in module.parameters()):
            raise ValueError(f"task module {name!r} shares parameters with the model or another task module; "
                             "a module's tensors must be its own (they are optimised, checkpointed and exported "
                             "separately)")
        taken.update(id(p) for p in module.parameters())
    return modules


def _float64(value: Any) -> Any:
    """``value`` to add up in float64 without a device sync: a tensor stays on its device (detached),
    a number becomes a float. The sums equal those of Python floats of the values, bit for bit."""
    return value.detach().double() if isinstance(value, torch.Tensor) else float(value)


class _Sums:
    """Task metrics of a step or a validation pass: per name, a summed value over a summed count."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def add(self, metrics: Mapping[str, Any], units: int) -> None:
        for name, value in metrics.items():
            value, count = value if isinstance(value, tuple) else (value, units)
            acc = self.sums.setdefault(name, [0.0, 0.0])
            acc[0] += _float64(value)
            acc[1] += _float64(count)

    def flat(self) -> tuple[list[str], list[float]]:
        """Names and their sums then counts, as Python floats (the one device sync of the metrics)."""
        names = sorted(self.sums)
        return names, [float(self.sums[n][0]) for n in names] + [float(self.sums[n][1]) for n in names]

    @staticmethod
    def means(names: list[str], totals: list[float], prefix: str = "") -> dict[str, float]:
        k = len(names)
        return {prefix + n: (totals[i] / totals[k + i] if totals[k + i] else float("nan")) for i, n in enumerate(names)}


class Trainer:
    """Train ``model`` (and the task's modules) on ``train_data`` with ``task`` as ``cfg`` says.

    ``train_data`` is a row dataset (walked by a :class:`BatchStream` of ``train.batch_size`` rows,
    seeded by ``data.seed``) or any :class:`BatchSource` (its batches are used as they come).
    ``model`` and the task's modules must be freshly built or loaded on the CPU with the same seed on
    every rank (FSDP shards them, DDP broadcasts them). ``fit()`` resumes from the newest checkpoint
    in ``cfg.train.out_dir`` when ``cfg.train.resume`` is set.

    ``flops``: training FLOPs of one micro-batch, for ``train.precision: auto`` (default:
    ``train.batch_size`` rows of the data's ``seq_len``, else of the model config's ``seq_length``; a
    task whose batches are much shorter, like PPO's rollouts, passes its own).

    Subclasses may override the parts of a step: :meth:`next_batches`, :meth:`forward_backward`,
    :meth:`optimizer_step`, :meth:`train_step` (and :meth:`evaluate`).
    """

    def __init__(self, cfg: TrainConfig, model: Qwen, train_data: RowDataset | BatchSource, task: Task | None = None,
                 val_data: RowDataset | None = None, info: DistInfo | None = None, name: str = "train",
                 flops: float | None = None) -> None:
        self.cfg, self.name = cfg, name
        self.info = info or init_distributed(cfg.train.device)
        self.task = task or NextTokenTask()
        t = cfg.train
        mcfg = getattr(model, "config", None)  # the step's size: on CPU bf16 pays only past a GFLOP
        if flops is None and isinstance(mcfg, QwenConfig):  # rows as long as the data's (packed, SFT), or the config's
            seq = getattr(train_data, "seq_len", None)
            flops = step_flops(mcfg, t.batch_size, seq if isinstance(seq, int) and seq > 0 else None)
        self.precision, why = resolve_precision(t.precision, self.info.device, flops)
        if t.compile_scope not in ("blocks", "model"):
            raise ValueError(f"train.compile_scope must be blocks or model, got {t.compile_scope!r}")
        if t.batch_size < 1 or t.grad_accum < 1 or t.max_steps < 1:
            raise ValueError("train.batch_size, train.grad_accum and train.max_steps must be >= 1")
        if t.threads:
            torch.set_num_threads(t.threads)
        self.out_dir = Path(t.out_dir)
        if cfg.model.dropout is not None:
            set_dropout(model, cfg.model.dropout)
        model.to(self.info.device)
        if t.activation_checkpointing:
            apply_activation_checkpointing(model)
        if t.compile and t.compile_scope == "blocks":  # before FSDP/DDP wrap the blocks (as torchtitan)
            compile_blocks(model)
        self.parallel = resolve_parallel(t.parallel, self.info)
        self.cpu_matmul, matmul_why = apply_cpu_matmul(model, t.cpu_matmul, self.info.device, self.precision,
                                                       t.compile, self.parallel)
        extra = task_modules(self.task, model)
        self.model = apply_parallel(model, self.parallel, self.info)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        # each task module: on the device, wrapped like the model, its own AdamW with the same rules
        self.modules: dict[str, nn.Module] = {}
        self.module_optimizers: dict[str, torch.optim.Optimizer] = {}
        for key, module in extra.items():
            self.modules[key] = apply_parallel(module.to(self.info.device), self.parallel, self.info)
            self.module_optimizers[key] = build_optimizer(self.modules[key], cfg.optim)
        self.forward_model = torch.compile(self.model) if t.compile and t.compile_scope == "model" else self.model
        if self.info.is_main:
            compiled = f", torch.compile ({t.compile_scope})" if t.compile else ""
            # stderr, like the progress bar: stdout stays the CLI's summary (JSON that callers parse)
            print(f"[{name}] precision {self.precision} ({why}){compiled}", file=sys.stderr, flush=True)
            if self.info.device.type == "cpu" and self.precision == "fp32":
                print(f"[{name}] fp32 matmuls on {self.cpu_matmul} ({matmul_why})", file=sys.stderr, flush=True)
        self.source: BatchSource = (train_data if is_batch_source(train_data) else
                                    BatchStream(train_data, t.batch_size, cfg.data.seed, self.info.rank,
                                                self.info.world_size))
        self.val = (eval_batches(val_data, t.batch_size, t.eval_batches, self.info.rank, self.info.world_size)
                    if val_data is not None and len(val_data) else [])
        self.step = 0
        self.peak_flops = t.peak_flops
        self.metric_names: list[str] = []  # the task's metrics, as last reported

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        if last or self.parallel != "ddp":
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for module in (self.model, *self.modules.values()):
            stack.enter_context(module.no_sync())
        return stack

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer, *self.module_optimizers.values()]

    def _set_mode(self, train: bool) -> None:
        for module in (self.model, *self.modules.values()):
            module.train(train)

    def _trained_modules(self) -> ckpt.Trained:
        return {k: (m, self.module_optimizers[k]) for k, m in self.modules.items()}

    def _extra_state(self) -> dict[str, Any]:
        return {"data": self.source.state_dict(), "config": self.cfg.to_dict(), "name": self.name}

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.out_dir, self.step, self.model, self.optimizer, self._extra_state(),
                                    self.info, keep_last=self.cfg.train.keep_last, modules=self._trained_modules(),
                                    source_state=self.source.state_dict())

    def try_resume(self) -> bool:
        if self.info.is_main:
            ckpt.remove_partial(self.out_dir)
        barrier()
        path = ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.info, modules=self._trained_modules())
        self.step = int(state["step"])
        self.source.load_state_dict(state["data"])
        return True

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """``val_loss`` (per unit, over the fixed validation batches) and the task's metrics as ``val_<name>``."""
        self._set_mode(False)
        total, units, sums = 0.0, 0, _Sums()
        for batch in self.val:
            batch = {k: v.to(self.info.device) for k, v in batch.items()}
            with self.autocast():
                loss, metrics = self.task.loss(self.forward_model, batch, self.modules)
            total += _float64(loss)
            count = self.task.count(batch)
            units += count
            sums.add(metrics, count)
        self._set_mode(True)
        names, values = sums.flat()
        totals = all_reduce_sums([float(total), units, *values], self.info)
        return {"val_loss": totals[0] / max(totals[1], 1), **_Sums.means(names, totals[2:], "val_")}

    # ------------------------------------------------------------------ the parts of a step
    def next_batches(self) -> list[dict[str, torch.Tensor]]:
        """The step's ``train.grad_accum`` micro-batches from the source, on the device."""
        return [{k: v.to(self.info.device) for k, v in self.source.next().items()}
                for _ in range(self.cfg.train.grad_accum)]

    def forward_backward(self, batch: dict[str, torch.Tensor], scale: float,
                         last: bool) -> tuple[torch.Tensor, Mapping[str, Any]]:
        """The task's summed loss of one micro-batch (returned detached, with its metrics) and the
        backward pass of ``loss * scale``; DDP synchronises gradients only on the ``last`` one."""
        with self._no_sync(last):  # DDP's forward decides whether this backward reduces
            with self.autocast():
                loss, metrics = self.task.loss(self.forward_model, batch, self.modules)
            (loss * scale).backward()
        return loss.detach(), metrics

    def optimizer_step(self) -> float:
        """Clip the global gradient norm (model and task modules together), step every optimiser,
        zero the gradients; returns the norm before clipping."""
        clip = self.cfg.optim.grad_clip if self.cfg.optim.grad_clip > 0 else float("inf")
        params = [p for m in (self.model, *self.modules.values()) for p in m.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def train_step(self) -> dict[str, float]:
        """One optimiser step; returns ``loss`` (per unit), ``lr``, ``grad_norm``, ``units``,
        ``tokens``, ``flops`` (whole step, all ranks) and the task's metrics."""
        cfg, info = self.cfg, self.info
        lr = lr_at(self.step, cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.max_steps, cfg.optim.schedule,
                   cfg.optim.min_lr_ratio)
        scales = [self.task.lr_scale("model"), *(self.task.lr_scale(k) for k in self.module_optimizers)]
        for optimizer, scale in zip(self.optimizers, scales):  # a module may learn at its own rate (PPO's value)
            for group in optimizer.param_groups:
                group["lr"] = lr * scale
        batches = self.next_batches()
        counts = [self.task.count(b) for b in batches]
        units = all_reduce_sum(sum(counts), info)
        scale = info.world_size / max(units, 1)
        config = unwrap(self.model).config
        loss_sum, tokens, flops, sums = 0.0, 0, 0.0, _Sums()
        for i, (batch, count) in enumerate(zip(batches, counts)):
            loss, metrics = self.forward_backward(batch, scale, i == len(batches) - 1)
            loss_sum += _float64(loss)  # summed on the device: no sync per micro-batch
            tokens += self.task.tokens(batch)
            flops += self.task.flops(config, batch)
            sums.add(metrics, count)
        grad_norm = self.optimizer_step()
        self.step += 1
        names, values = sums.flat()
        clash = RECORD_KEYS.intersection(names)
        if clash:
            raise ValueError(f"task metric names {sorted(clash)} clash with the loop's own; rename them")
        totals = all_reduce_sums([float(loss_sum), tokens, flops, *values], info)
        self.metric_names = names
        return {"loss": totals[0] / max(units, 1), "lr": lr, "grad_norm": grad_norm, "units": units,
                "tokens": totals[1], "flops": totals[2], **_Sums.means(names, totals[3:])}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train to ``max_steps`` (resuming if possible); returns a summary of the run."""
        cfg, info, t = self.cfg, self.info, self.cfg.train
        seed_everything(t.seed + info.rank)  # dropout differs per rank, init was done before wrapping
        resumed = t.resume and self.try_resume()
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out_dir / "config.yaml")
        logger = MetricsLogger(self.out_dir, enabled=info.is_main, tensorboard=t.tensorboard,
                               resume_step=self.step if resumed else 0)
        if self.peak_flops is None:
            self.peak_flops = measure_peak_flops(
                info.device, torch.bfloat16 if self.precision == "bf16" and info.device.type == "cuda" else torch.float32)
        bar = None
        if info.is_main and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True)
        self._set_mode(True)
        last_val: dict[str, float] | None = None
        start_time, trained_tokens = time.perf_counter(), 0.0
        end = t.max_steps if t.stop_after is None else min(t.max_steps, t.stop_after)
        first = self.step
        try:
            while self.step < end:
                t0 = time.perf_counter()
                stats = self.train_step()
                if info.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                if t.compile and info.is_main and self.step == first + 1:
                    print(f"[{self.name}] first step {dt:.1f} s (torch.compile's compilation included)",
                          file=sys.stderr, flush=True)
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(
                        f"loss became {stats['loss']} at step {self.step}; lower optim.lr or raise warmup_steps")
                trained_tokens += stats["tokens"]
                rec = {"kind": "train", "step": self.step, "loss": stats["loss"], "lr": stats["lr"],
                       "grad_norm": stats["grad_norm"], "tokens": int(stats["tokens"]), "units": int(stats["units"])}
                epoch = getattr(self.source, "epoch", None)
                if epoch is not None:
                    rec["epoch"] = round(epoch, 4)
                rec.update(step_time_s=dt, tokens_per_s=stats["tokens"] / dt, flops_per_s=stats["flops"] / dt)
                rec["mfu"] = rec["flops_per_s"] / (self.peak_flops * info.world_size)
                rec.update({n: stats[n] for n in self.metric_names})
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    logger.log(rec)
                if self.val and ((t.eval_every and self.step % t.eval_every == 0) or self.step == end):
                    last_val = self.evaluate()
                    logger.log({"kind": "val", "step": self.step, **last_val})
                if (t.save_every and self.step % t.save_every == 0) or self.step == end:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"loss": f"{stats['loss']:.3f}", "lr": f"{stats['lr']:.2e}",
                                     "tok_s": f"{rec['tokens_per_s']:.0f}", "mfu": f"{rec['mfu']:.1%}",
                                     **{n: f"{stats[n]:.3g}" for n in self.metric_names}})
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        if self.val and last_val is None:  # a resumed run that had nothing left to do
            last_val = self.evaluate()
        elapsed = time.perf_counter() - start_time
        summary = {"steps": self.step, "resumed": resumed, "val_loss": last_val["val_loss"] if last_val else None,
                   "final_loss": next((r["loss"] for r in reversed(logger.records) if r.get("kind") == "train"), None),
                   "seconds": elapsed, "tokens_per_s": trained_tokens / elapsed if trained_tokens else None}
        if last_val:
            summary.update({k: v for k, v in last_val.items() if k != "val_loss"})
        if info.is_main:
            if logger.records and t.plot:
                plot_loss_curves({self.name: logger.records}, self.out_dir / "loss.png", title=f"{self.name} loss",
                                 metrics=self.metric_names or _logged_metrics(logger.records))
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path, tokenizer: Any = None) -> Path | None:
        """Write the trained model in the Hugging Face Qwen2 layout (+ the tokenizer, + each task module
        as ``modules/<name>.safetensors``) to ``path`` (collective under FSDP; only rank 0 writes)."""
        return export_model(self.model, path, tokenizer, self.info, modules=self.modules)


def _logged_metrics(records: list[dict[str, Any]]) -> list[str]:
    """Task metrics in a log (a resumed run that trained no step still plots the earlier ones)."""
    names = {k for r in records if r.get("kind") == "train" for k in r} - RECORD_KEYS
    return sorted(names)
