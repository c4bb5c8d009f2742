"""Toy alignment-shaped training jobs for the tests (imported by them, and run as a script by the
kill-and-resume test):

- :class:`ScalarHeadTask`: a scalar head (a task module) on the model's final hidden states
  regresses a float target per row, the shape of a reward model;
- :class:`RowsWithTarget`: packed rows plus that float target (10 x the row's fraction of spaces);
- :func:`pool_source`: a batch source that draws rows from a pool with its seeded generator, the
  shape of preference pairs or rollouts made on the fly.

    python tests/train/toy_tasks.py OUT DATA STEPS   # trains the head task, exports into OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from openqwen import Qwen
from openqwen.train.batches import PackedRows, collate
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.sources import GeneratedBatches
from openqwen.train.tasks import Task, final_hidden_states

sys.path.insert(0, str(Path(__file__).parent))
from train_helpers import nano_config  # noqa: E402

SPACE = ord(" ")


class RowsWithTarget:
    def __init__(self, rows: PackedRows) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        row = dict(self.rows[i])
        row["target"] = np.float32(10.0 * np.mean(row["input_ids"] == SPACE))
        return row


class ScalarHeadTask(Task):
    """Squared error of ``head(h_last)`` against ``batch["target"]``, summed over rows (the units)."""

    def __init__(self, hidden_size: int, seed: int = 1) -> None:
        torch.manual_seed(seed)
        self.head = nn.Linear(hidden_size, 1)

    def modules(self) -> dict[str, nn.Module]:
        return {"head": self.head}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["target"].numel())

    def loss(self, model, batch, modules=None):
        hidden = final_hidden_states(model, batch)[:, -1]
        pred = modules["head"](hidden).squeeze(-1).float()
        err = pred - batch["target"]
        rows = err.numel()
        return (err**2).sum(), {"target_mean": batch["target"].sum().detach(),
                                "within_half": ((err.abs() < 0.5).sum().detach(), rows)}


def head_config(out: Path, data: Path, steps: int = 10, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.batch_size": 4, "train.grad_accum": 2,
            "train.max_steps": steps, "train.save_every": 2, "train.keep_last": 2, "optim.lr": 3e-3,
            "optim.warmup_steps": 2, "model.dropout": 0.1, "train.progress": False, "train.peak_flops": 1e10,
            "train.tensorboard": False, "train.threads": 1}
    base.update(over)
    return TrainConfig.load(None, base)


def head_trainer(cfg: TrainConfig, data: Path, val: RowsWithTarget | None = None) -> Trainer:
    torch.manual_seed(cfg.train.seed)
    model = Qwen(nano_config())
    return Trainer(cfg, model, RowsWithTarget(PackedRows(data)), task=ScalarHeadTask(model.config.hidden_size),
                   val_data=val, name="head")


def pool_source(data: Path, batch_size: int, seed: int, drawn: list | None = None,
                rank: int | None = None) -> GeneratedBatches:
    """Batches of ``batch_size`` rows drawn at random from the packed rows; ``drawn`` collects each
    batch's row indices (what the tests compare)."""
    rows = PackedRows(data)

    def make(generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(rows), (batch_size,), generator=generator).tolist()
        if drawn is not None:
            drawn.append(idx)
        return collate([rows[i] for i in idx])

    return GeneratedBatches(make, seed, rank)


if __name__ == "__main__":
    out, data, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    trainer = head_trainer(head_config(out, data, steps), data)
    trainer.fit()
    trainer.export(out)
