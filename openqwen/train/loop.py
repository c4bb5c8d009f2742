"""The one training loop (pretraining, SFT; reward modelling and PPO plug in as tasks).

:class:`Trainer` owns what every stage shares: parallelism, precision, activation checkpointing,
compilation, AdamW and its schedule, gradient accumulation and clipping, checkpoints with exact
resume, validation and metrics. What is learnt is the :class:`~openqwen.train.tasks.Task`: it
returns a summed loss and the number of units it covers; the loop normalises by the units of the
whole step (all micro-batches, all ranks), so the update does not depend on how the global batch
is split.

One optimiser step::

    lr <- schedule(step)
    for each of grad_accum micro-batches (rows picked by BatchStream, recomputable from the step):
        loss_sum <- task.loss(model, batch)      # under bf16 autocast when precision=bf16
        backward(loss_sum * world / units_in_step)
    clip global grad norm to grad_clip; AdamW step; zero grads
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from openqwen.checkpoint import save_model
from openqwen.model import Qwen

from . import checkpointing as ckpt
from .batches import BatchStream, RowDataset, eval_batches
from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum, apply_parallel, barrier, init_distributed, resolve_parallel, unwrap
from .metrics import MetricsLogger, measure_peak_flops, plot_loss_curves
from .optim import build_optimizer, lr_at
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Train ``model`` on ``train_data`` with ``task`` as ``cfg`` says.

    ``model`` must be freshly built or loaded on the CPU with the same seed on every rank (FSDP
    shards it, DDP broadcasts it). ``fit()`` resumes from the newest checkpoint in
    ``cfg.train.out_dir`` when ``cfg.train.resume`` is set.
    """

    def __init__(self, cfg: TrainConfig, model: Qwen, train_data: RowDataset, task: Task | None = None,
                 val_data: RowDataset | None = None, info: DistInfo | None = None, name: str = "train") -> None:
        self.cfg, self.name = cfg, name
        self.info = info or init_distributed(cfg.train.device)
        self.task = task or NextTokenTask()
        t = cfg.train
        if t.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be fp32 or bf16, got {t.precision!r}")
        if t.batch_size < 1 or t.grad_accum < 1 or t.max_steps < 1:
            raise ValueError("train.batch_size, train.grad_accum and train.max_steps must be >= 1")
        if t.threads:
            torch.set_num_threads(t.threads)
        self.out_dir = Path(t.out_dir)
        self.bare = model
        if cfg.model.dropout is not None:
            set_dropout(model, cfg.model.dropout)
        model.to(self.info.device)
        if t.activation_checkpointing:
            apply_activation_checkpointing(model)
        self.parallel = resolve_parallel(t.parallel, self.info)
        self.model = apply_parallel(model, self.parallel, self.info)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.forward_model = torch.compile(self.model) if t.compile else self.model
        self.stream = BatchStream(train_data, t.batch_size, cfg.data.seed, self.info.rank, self.info.world_size)
        self.val = (eval_batches(val_data, t.batch_size, t.eval_batches, self.info.rank, self.info.world_size)
                    if val_data is not None and len(val_data) else [])
        self.seq_len = int(train_data[0]["input_ids"].shape[0])
        self.step = 0
        self.peak_flops = t.peak_flops

    # ------------------------------------------------------------------ helpers
    def autocast(self):
        if self.cfg.train.precision == "bf16":
            return torch.autocast(self.info.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _no_sync(self, last: bool):
        if last or self.parallel != "ddp":
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _extra_state(self) -> dict[str, Any]:
        return {"data": self.stream.state_dict(), "config": self.cfg.to_dict(), "name": self.name}

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.out_dir, self.step, self.model, self.optimizer, self._extra_state(),
                                    self.info, keep_last=self.cfg.train.keep_last)

    def try_resume(self) -> bool:
        if self.info.is_main:
            ckpt.remove_partial(self.out_dir)
        barrier()
        path = ckpt.latest_checkpoint(self.out_dir)
        if path is None:
            return False
        state = ckpt.load_checkpoint(path, self.model, self.optimizer, self.info)
        self.step = int(state["step"])
        self.stream.load_state_dict(state["data"])
        return True

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean validation loss over the fixed validation batches."""
        self.model.eval()
        total, units = 0.0, 0
        for batch in self.val:
            batch = {k: v.to(self.info.device) for k, v in batch.items()}
            with self.autocast():
                loss, _ = self.task.loss(self.forward_model, batch)
            total += float(loss)
            units += self.task.count(batch)
        self.model.train()
        total, units = all_reduce_sum(total, self.info), all_reduce_sum(units, self.info)
        return total / max(units, 1)

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict[str, float]:
        cfg, info = self.cfg, self.info
        lr = lr_at(self.step, cfg.optim.lr, cfg.optim.warmup_steps, cfg.train.max_steps, cfg.optim.schedule,
                   cfg.optim.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [{k: v.to(info.device) for k, v in self.stream.next().items()}
                   for _ in range(cfg.train.grad_accum)]
        units = all_reduce_sum(sum(self.task.count(b) for b in batches), info)
        scale = info.world_size / max(units, 1)
        loss_sum = 0.0
        for i, batch in enumerate(batches):
            with self._no_sync(i == len(batches) - 1), self.autocast():
                loss, _ = self.task.loss(self.forward_model, batch)
            with self._no_sync(i == len(batches) - 1):
                (loss * scale).backward()
            loss_sum += loss.detach().float().item()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad], clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss_sum = all_reduce_sum(loss_sum, info)
        return {"loss": loss_sum / max(units, 1), "lr": lr, "grad_norm": float(grad_norm), "units": units}

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
                info.device, torch.bfloat16 if t.precision == "bf16" and info.device.type == "cuda" else torch.float32)
        flops_per_token = unwrap(self.model).config.flops_per_token(self.seq_len)
        bar = None
        if info.is_main and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=t.max_steps, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True)
        self.model.train()
        tokens_per_step = t.batch_size * t.grad_accum * info.world_size * self.seq_len
        last_val = None
        start_time, start_step = time.perf_counter(), self.step
        end = t.max_steps if t.stop_after is None else min(t.max_steps, t.stop_after)
        try:
            while self.step < end:
                t0 = time.perf_counter()
                stats = self.train_step()
                if info.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                if not math.isfinite(stats["loss"]):
                    raise FloatingPointError(
                        f"loss became {stats['loss']} at step {self.step}; lower optim.lr or raise warmup_steps")
                rec = {"kind": "train", "step": self.step, "loss": stats["loss"], "lr": stats["lr"],
                       "grad_norm": stats["grad_norm"], "tokens": tokens_per_step, "loss_tokens": int(stats["units"]),
                       "epoch": round(self.stream.epoch, 4), "step_time_s": dt,
                       "tokens_per_s": tokens_per_step / dt,
                       "flops_per_s": flops_per_token * tokens_per_step / dt}
                rec["mfu"] = rec["flops_per_s"] / (self.peak_flops * info.world_size)
                if self.step % t.log_every == 0 or self.step == t.max_steps:
                    logger.log(rec)
                if self.val and ((t.eval_every and self.step % t.eval_every == 0) or self.step == end):
                    last_val = self.evaluate()
                    logger.log({"kind": "val", "step": self.step, "val_loss": last_val})
                if (t.save_every and self.step % t.save_every == 0) or self.step == end:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{stats['lr']:.2e}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}", mfu=f"{rec['mfu']:.1%}")
        finally:
            if bar is not None:
                bar.close()
            logger.close()
        if self.val and last_val is None:  # a resumed run that had nothing left to do
            last_val = self.evaluate()
        elapsed = time.perf_counter() - start_time
        summary = {"steps": self.step, "resumed": resumed, "val_loss": last_val,
                   "final_loss": next((r["loss"] for r in reversed(logger.records) if r.get("kind") == "train"), None),
                   "seconds": elapsed,
                   "tokens_per_s": (self.step - start_step) * tokens_per_step / elapsed if elapsed else None}
        if info.is_main:
            if logger.records:
                plot_loss_curves({self.name: logger.records}, self.out_dir / "loss.png", title=f"{self.name} loss")
            (self.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    # ------------------------------------------------------------------ export
    def export(self, path: str | Path, tokenizer: Any = None) -> Path | None:
        """Write the trained model in the Hugging Face Qwen2 layout (+ the tokenizer) to ``path``
        (collective under FSDP; only rank 0 writes)."""
        return export_model(self.model, path, tokenizer, self.info)


def export_model(model: nn.Module, path: str | Path, tokenizer: Any = None, info: DistInfo | None = None) -> Path | None:
    from .lora import merge_lora_state

    info = info or DistInfo()
    state, _ = ckpt.full_state(model, None)
    path = Path(path)
    if not info.is_main:
        return None
    bare = unwrap(model)
    state = merge_lora_state(state)
    with torch.device("meta"):
        clean = Qwen(bare.config.replace(dropout=0.0))  # a copy: the training model keeps its config
    clean.load_state_dict({k: v.float() for k, v in state.items()}, strict=False, assign=True)
    if bare.config.tie_word_embeddings:
        clean.lm_head.weight = clean.embed_tokens.weight
    save_model(clean, path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path
