"""FSDP2 and DDP on two gloo processes give the single-process result (same global batch), for the
plain next-token task and for a task with a module of its own (a scalar head); batches made on the
fly come in one stream per rank, and an interrupted two-process run draws the same ones."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from openqwen import Qwen, load_model
from openqwen.train.batches import PackedRows
from openqwen.train.config import TrainConfig
from openqwen.train.export import load_module
from openqwen.train.loop import Trainer
from openqwen.train.metrics import read_metrics

from toy_tasks import RowsWithTarget, ScalarHeadTask, pool_source
from train_helpers import nano_config

STEPS = 4
# Adam divides each update by the root of its second moment, so where a gradient is tiny the
# different summation order of two ranks shows up magnified (measured up to 1.5e-5 after 4 steps at
# lr 3e-3, i.e. 0.5 % of one step's update); a wrong gradient moves weights by whole steps. The loss
# and the gradient norm (which Adam does not normalise) are compared tightly.
WEIGHT_ATOL = 5e-5


def _cfg(out: Path, data: Path, batch: int, parallel: str, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.batch_size": batch, "train.max_steps": STEPS,
            "train.grad_accum": 2, "optim.lr": 3e-3, "optim.warmup_steps": 1, "train.progress": False,
            "train.peak_flops": 1e10, "train.tensorboard": False, "train.parallel": parallel}
    base.update(over)
    return TrainConfig.load(None, base)


def _run(cfg: TrainConfig, data: Path, info=None, head: bool = False) -> Trainer:
    torch.manual_seed(0)
    model = Qwen(nano_config())
    if head:
        trainer = Trainer(cfg, model, RowsWithTarget(PackedRows(data)), task=ScalarHeadTask(64), info=info)
    else:
        trainer = Trainer(cfg, model, PackedRows(data), info=info)
    trainer.fit()
    return trainer


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from openqwen.train.distributed import init_distributed

    info = init_distributed("cpu")
    for mode in ("fsdp", "ddp"):
        for task in ("plain", "head"):
            run_dir = Path(out) / f"{mode}-{task}"
            if mode == "fsdp":  # also exercise sharded checkpointing: stop at step 2, resume to the end
                _run(_cfg(run_dir, Path(data), 2, mode, **{"train.stop_after": 2}), Path(data), info, task == "head")
            trainer = _run(_cfg(run_dir, Path(data), 2, mode), Path(data), info, task == "head")
            trainer.export(run_dir / "model")
    # batches made on the fly, one stream per rank: an interrupted run draws what an uninterrupted one does
    for run, stops in (("whole", [None]), ("interrupted", [2, None])):
        drawn: list = []
        for stop in stops:
            torch.manual_seed(0)
            cfg = _cfg(Path(out) / f"generated-{run}", Path(data), 2, "fsdp", **{"train.stop_after": stop})
            trainer = Trainer(cfg, Qwen(nano_config()), pool_source(Path(data), 2, seed=3, drawn=drawn), info=info)
            trainer.fit()
        trainer.export(Path(out) / f"generated-{run}" / "model")
        (Path(out) / f"generated-{run}" / f"drawn{rank}.json").write_text(json.dumps(drawn))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _curve(run: Path, key: str) -> torch.Tensor:
    return torch.tensor([r[key] for r in read_metrics(run) if r["kind"] == "train"])


def test_fsdp2_and_ddp_on_two_processes_match_one_process(tmp_path, packed_text):
    # one process, 4 rows per micro-batch == two ranks with 2 rows each (rank r takes rows [2r, 2r+2))
    single = {task: _run(_cfg(tmp_path / f"single-{task}", packed_text, 4, "none"), packed_text, head=task == "head")
              for task in ("plain", "head")}
    mp.spawn(_worker, args=(2, _free_port(), str(packed_text), str(tmp_path)), nprocs=2, join=True)
    for mode in ("fsdp", "ddp"):
        for task, ref in single.items():
            run = tmp_path / f"{mode}-{task}"
            model = load_model(run / "model")
            for name, p in ref.model.state_dict().items():
                torch.testing.assert_close(model.state_dict()[name], p, atol=WEIGHT_ATOL, rtol=0, msg=f"{run} {name}")
            if task == "head":
                head = load_module(run / "model", "head", nn.Linear(64, 1))
                for name, p in ref.modules["head"].state_dict().items():
                    torch.testing.assert_close(head.state_dict()[name], p, atol=WEIGHT_ATOL, rtol=0,
                                               msg=f"{run} {name}")
            for key in ("loss", "grad_norm"):
                want, got = _curve(tmp_path / f"single-{task}", key), _curve(run, key)
                assert len(got) == STEPS
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"{run} {key}")
    assert (tmp_path / "fsdp-plain" / "checkpoints" / "step_00000002").is_dir()
    whole, interrupted = tmp_path / "generated-whole", tmp_path / "generated-interrupted"
    drawn = {(run, r): json.loads((run / f"drawn{r}.json").read_text()) for run in (whole, interrupted) for r in (0, 1)}
    assert len(drawn[whole, 0]) == STEPS * 2 and drawn[whole, 0] != drawn[whole, 1]  # each rank its own stream
    assert drawn[interrupted, 0] == drawn[whole, 0] and drawn[interrupted, 1] == drawn[whole, 1]
    a, b = load_model(whole / "model").state_dict(), load_model(interrupted / "model").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
