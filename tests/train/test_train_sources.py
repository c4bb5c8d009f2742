"""Batch sources: a source that makes batches on the fly resumes exactly (the same batches after a
resume as in the uninterrupted run, the same final weights bitwise)."""

from __future__ import annotations

import pytest
import torch

from openqwen import Qwen
from openqwen.train.batches import PackedRows
from openqwen.train.checkpointing import latest_checkpoint
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.sources import BatchStream

from toy_tasks import pool_source
from train_helpers import nano_config

BATCH = 4


def _cfg(out, data, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.max_steps": 8, "train.grad_accum": 2,
            "train.save_every": 2, "optim.lr": 3e-3, "optim.warmup_steps": 2, "model.dropout": 0.1,
            "train.progress": False, "train.peak_flops": 1e10, "train.tensorboard": False}
    base.update(over)
    return TrainConfig.load(None, base)


def _train(cfg: TrainConfig, data, drawn: list) -> Trainer:
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(cfg, Qwen(nano_config()), pool_source(data, BATCH, seed=5, drawn=drawn))
    trainer.fit()
    return trainer


def test_generated_source_continues_where_it_stopped(packed_text):
    first, second = [], []
    a = pool_source(packed_text, BATCH, seed=5, drawn=first)
    for _ in range(3):
        a.next()
    state = a.state_dict()
    tail = [a.next()["input_ids"] for _ in range(3)]
    b = pool_source(packed_text, BATCH, seed=5, drawn=second)
    b.load_state_dict(state)
    assert all(torch.equal(x, b.next()["input_ids"]) for x in tail)
    assert second == first[3:]
    other_rank = pool_source(packed_text, BATCH, seed=5, rank=1)
    rank0 = pool_source(packed_text, BATCH, seed=5)
    assert other_rank.next()["input_ids"].tolist() != rank0.next()["input_ids"].tolist()
    with pytest.raises(ValueError, match="resume with the same seed and number of processes"):
        other_rank.load_state_dict(state)
    with pytest.raises(ValueError, match="resume with the same batch source"):
        pool_source(packed_text, BATCH, seed=5).load_state_dict(BatchStream(PackedRows(packed_text), 4, 0).state_dict())


def test_generated_source_resumes_exactly_in_the_loop(tmp_path, packed_text):
    full_drawn, half_drawn, resumed_drawn = [], [], []
    full = _train(_cfg(tmp_path / "full", packed_text), packed_text, full_drawn)
    _train(_cfg(tmp_path / "half", packed_text, **{"train.stop_after": 4}), packed_text, half_drawn)
    assert (latest_checkpoint(tmp_path / "half") / "source_rank0.pt").exists()
    resumed = _train(_cfg(tmp_path / "half", packed_text), packed_text, resumed_drawn)
    assert len(full_drawn) == 8 * 2 and half_drawn == full_drawn[:8]
    assert resumed_drawn == full_drawn[8:]  # the batches after the resume are the uninterrupted run's
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
