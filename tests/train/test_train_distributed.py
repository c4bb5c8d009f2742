"""FSDP2 and DDP on two gloo processes give the single-process result (same global batch)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from openqwen import Qwen, load_model
from openqwen.train.batches import PackedRows
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.metrics import read_metrics

from train_helpers import nano_config

STEPS = 4


def _cfg(out: Path, data: Path, batch: int, parallel: str, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.batch_size": batch, "train.max_steps": STEPS,
            "train.grad_accum": 2, "optim.lr": 3e-3, "optim.warmup_steps": 1, "train.progress": False,
            "train.peak_flops": 1e10, "train.tensorboard": False, "train.parallel": parallel}
    base.update(over)
    return TrainConfig.load(None, base)


def _run(cfg: TrainConfig, data: Path, info=None) -> Trainer:
    torch.manual_seed(0)
    trainer = Trainer(cfg, Qwen(nano_config()), PackedRows(data), info=info)
    trainer.fit()
    return trainer


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from openqwen.train.distributed import init_distributed

    info = init_distributed("cpu")
    for mode in ("fsdp", "ddp"):
        run_dir = Path(out) / mode
        if mode == "fsdp":  # also exercise sharded checkpointing: stop at step 2, resume to the end
            _run(_cfg(run_dir, Path(data), 2, mode, **{"train.stop_after": 2}), Path(data), info)
        trainer = _run(_cfg(run_dir, Path(data), 2, mode), Path(data), info)
        trainer.export(run_dir / "model")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_and_ddp_on_two_processes_match_one_process(tmp_path, packed_text):
    # one process, 4 rows per micro-batch == two ranks with 2 rows each (rank r takes rows [2r, 2r+2))
    single = _run(_cfg(tmp_path / "single", packed_text, 4, "none"), packed_text)
    mp.spawn(_worker, args=(2, _free_port(), str(packed_text), str(tmp_path)), nprocs=2, join=True)
    ref_losses = [r["loss"] for r in read_metrics(tmp_path / "single")]
    for mode in ("fsdp", "ddp"):
        model = load_model(tmp_path / mode / "model")
        for name, p in single.model.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], p, atol=1e-5, rtol=1e-4, msg=f"{mode} {name}")
        losses = [r["loss"] for r in read_metrics(tmp_path / mode)]
        assert len(losses) == STEPS
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), atol=1e-5, rtol=1e-5)
    assert (tmp_path / "fsdp" / "checkpoints" / "step_00000002").is_dir()
