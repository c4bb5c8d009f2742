"""What a run reports: a JSONL log, a console progress bar, TensorBoard when installed, a PNG curve.

Only rank 0 writes. Each JSONL line is one event: ``{"kind": "train", "step", "loss", "lr",
"grad_norm", "tokens", "units", "tokens_per_s", "flops_per_s", "mfu", ...}`` plus the task's own
metrics by name, or ``{"kind": "val", "step", "val_loss", "val_<metric>" ...}``.
A resumed run appends to the same file after cutting the lines past the checkpoint's step, so the
log always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                       seconds: float = 1.0) -> float:
    """Achieved FLOP/s of a square matmul in ``dtype`` on ``device``: the peak MFU is measured against
    (1024-wide on CPUs, 8192-wide on GPUs, which need large products to reach their peak)."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    # the best of several short windows: on a shared machine a single long window measures the load
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t0))
    return best


class MetricsLogger:
    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int = 0) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.records: list[dict[str, Any]] = []
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec.get("step", 0) <= resume_step and resume_step > 0:
                    kept.append(rec)
            self.records = kept
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{k}", v, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curves(runs: dict[str, list[dict[str, Any]]], out_png: str | Path, title: str = "loss",
                     metrics: Sequence[str] = ()) -> Path:
    """A PNG with the training (and validation, dashed) loss of each named run against its step, and
    below it one row per task metric in ``metrics`` (its ``val_`` twin dashed, when logged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = ["loss", *metrics]
    fig, axes = plt.subplots(len(rows), len(runs), figsize=(5.5 * len(runs), 4 * len(rows)), squeeze=False)
    for col, (name, records) in enumerate(runs.items()):
        for row, key in enumerate(rows):
            ax = axes[row][col]
            train = [(r["step"], r[key]) for r in records if r.get("kind") == "train" and key in r]
            val = [(r["step"], r[f"val_{key}"]) for r in records if r.get("kind") == "val" and f"val_{key}" in r]
            if train:
                ax.plot(*zip(*train), label="train", lw=1)
            if val:
                ax.plot(*zip(*val), "o--", label="validation")
            ax.set_title(name if row == 0 else f"{name}: {key}")
            ax.set_xlabel("step")
            ax.set_ylabel("loss (nats/unit)" if key == "loss" else key)
            ax.grid(alpha=0.3)
            if train or val:
                ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_metric_page(records: list[dict[str, Any]], panels: Sequence[tuple[str, Sequence[str]]], out_png: str | Path,
                     title: str, columns: int = 4) -> Path:
    """One page of small panels: each ``(panel title, metric names)`` draws those training metrics
    against the step (a stage's own overview, e.g. PPO's rewards, KL and clip fractions). Panels whose
    metrics were never logged are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("kind") == "train"]
    shown = [(name, [k for k in keys if any(k in r for r in train)]) for name, keys in panels]
    shown = [(name, keys) for name, keys in shown if keys]
    rows = max(1, -(-len(shown) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, (name, keys) in zip(axes.flat, shown):
        for key in keys:
            points = [(r["step"], r[key]) for r in train if key in r]
            ax.plot(*zip(*points), lw=1, label=key)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
