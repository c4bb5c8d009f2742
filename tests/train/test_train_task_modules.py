"""A task that trains a module besides the model (a scalar head on the final hidden states, the shape
of a reward model): it learns, its metrics are aggregated and logged, it resumes bitwise after a
SIGKILL in the middle of a save, and it is exported strictly next to the model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from openqwen import Qwen, load_model
from openqwen.train.batches import PackedRows
from openqwen.train.export import export_model, load_module
from openqwen.train.loop import Trainer
from openqwen.train.metrics import read_metrics
from openqwen.train.sources import BatchStream

from toy_tasks import RowsWithTarget, ScalarHeadTask, head_config, head_trainer
from train_helpers import nano_config

TOY = Path(__file__).with_name("toy_tasks.py")


def test_head_task_learns_and_logs_its_metrics(tmp_path, packed_text, capsys):
    cfg = head_config(tmp_path, packed_text, steps=40, **{"model.dropout": 0.0, "train.save_every": 0,
                                                          "train.progress": True, "train.eval_every": 20})
    rows = PackedRows(packed_text)
    val = RowsWithTarget(PackedRows(rows.ds, len(rows) - 8))
    trainer = head_trainer(cfg, packed_text, val)
    head = trainer.modules["head"]
    assert any(p is head.weight for g in trainer.module_optimizers["head"].param_groups for p in g["params"])
    head_before = head.weight.detach().clone()
    trainer.fit()
    recs = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    losses = [r["loss"] for r in recs]
    assert sum(losses[-5:]) / 5 < 0.25 * losses[0]  # squared error per row falls
    assert not torch.equal(head.weight, head_before)
    # the logged metrics are the task's sums over the step's rows, recomputed here from the data order
    stream = BatchStream(RowsWithTarget(PackedRows(packed_text)), 4, cfg.data.seed)
    for rec in recs:
        targets = torch.cat([stream.next()["target"] for _ in range(cfg.train.grad_accum)])
        assert rec["target_mean"] == pytest.approx(float(targets.mean()), rel=1e-6)
        assert rec["units"] == 8 and rec["tokens"] == 8 * 64
        assert 0 <= rec["within_half"] * 8 == round(rec["within_half"] * 8)  # a count of rows out of 8
    assert recs[-1]["within_half"] > recs[0]["within_half"]
    # validation: the task's metrics as val_<name>; the loss recomputed with the model and head directly
    vals = [r for r in read_metrics(tmp_path) if r["kind"] == "val"]
    assert [r["step"] for r in vals] == [20, 40]
    targets = torch.tensor([val[i]["target"] for i in range(len(val))])
    ids = torch.stack([torch.from_numpy(val[i]["input_ids"]).long() for i in range(len(val))])
    with torch.no_grad():
        pred = head(trainer.model.hidden_states(ids)[:, -1]).squeeze(-1)
    assert vals[-1]["val_loss"] == pytest.approx(float(((pred - targets) ** 2).mean()), rel=1e-5)
    assert vals[-1]["val_target_mean"] == pytest.approx(float(targets.mean()), rel=1e-6)
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()[-1]  # the progress bar's last state
    assert "40/40" in bar and f"target_mean={recs[-1]['target_mean']:.3g}" in bar and "within_half=" in bar
    # the loss plot has a row for each metric: 400 px per row at the default size
    import matplotlib.image

    assert matplotlib.image.imread(tmp_path / "loss.png").shape[0] == 3 * 400


def _run_script(out: Path, data: Path, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(TOY), str(out), str(data), "10"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_head_task_resumes_bitwise_after_a_kill_and_exports_strictly(tmp_path, packed_text):
    ref_dir = tmp_path / "ref"
    trainer = head_trainer(head_config(ref_dir, packed_text), packed_text)
    trainer.fit()
    trainer.export(ref_dir)
    run = tmp_path / "run"
    p = _run_script(run, packed_text, {"OPENQWEN_CRASH_AT": "save:4:before-rename"})
    assert p.wait(timeout=300) == -signal.SIGKILL, p.stdout.read()
    assert sorted(x.name for x in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000004.tmp"]
    p = _run_script(run, packed_text)
    assert p.wait(timeout=300) == 0, p.stdout.read()
    loaded = load_model(run).state_dict()  # the model folder loads as it is: the head sits in modules/
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(loaded[k], v), k
    for name in ("model.safetensors", "modules/head.safetensors"):
        want, got = load_file(str(ref_dir / name)), load_file(str(run / name))
        assert want.keys() == got.keys()
        for k in want:
            assert torch.equal(want[k], got[k]), (name, k)
    assert ([(r["step"], r["loss"]) for r in read_metrics(run)]
            == [(r["step"], r["loss"]) for r in read_metrics(ref_dir)])
    # the exported head reloads to the trained values, into a module built like it
    head = load_module(ref_dir, "head", nn.Linear(64, 1))
    for k, v in trainer.modules["head"].state_dict().items():
        assert torch.equal(head.state_dict()[k], v), k
    with pytest.raises(ValueError, match="unexpected bias"):
        load_module(ref_dir, "head", nn.Linear(64, 1, bias=False))
    with pytest.raises(ValueError, match="missing 0.bias, 0.weight; unexpected bias, weight"):
        load_module(ref_dir, "head", nn.Sequential(nn.Linear(64, 1)))
    with pytest.raises(ValueError, match=r"shapes differ: bias \(1,\) \(expected \(2,\)\), weight \(1, 64\) "
                                         r"\(expected \(2, 64\)\)"):
        load_module(ref_dir, "head", nn.Linear(64, 2))
    with pytest.raises(FileNotFoundError, match="no exported module 'value'"):
        load_module(ref_dir, "value", nn.Linear(64, 1))


def test_export_refuses_tensors_outside_the_qwen_layout(tmp_path):
    torch.manual_seed(0)
    model = Qwen(nano_config())
    model.reward_scale = nn.Parameter(torch.ones(1))  # trained on the model, not as a task module
    with pytest.raises(ValueError, match="unexpected reward_scale.*task module"):
        export_model(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()


class _Bad(ScalarHeadTask):
    def __init__(self, modules: dict) -> None:
        self._modules = modules

    def modules(self):
        return self._modules


def test_task_modules_are_checked(tmp_path, packed_text):
    cfg = head_config(tmp_path, packed_text)
    torch.manual_seed(0)
    model = Qwen(nano_config())
    rows = RowsWithTarget(PackedRows(packed_text))
    shared = nn.Linear(64, 1)
    cases = [({"model": nn.Linear(64, 1)}, "task module name 'model'"),
             ({"tied": nn.ModuleList([model.norm])}, "'tied' shares parameters with the model"),
             ({"a": shared, "b": nn.Sequential(shared)}, "'b' shares parameters with the model or another"),
             ({"frozen": nn.Linear(64, 1).requires_grad_(False)}, "'frozen' has no trainable parameters")]
    for modules, message in cases:
        with pytest.raises(ValueError, match=message):
            Trainer(cfg, model, rows, task=_Bad(modules))


def test_resume_refuses_a_checkpoint_of_other_task_modules(tmp_path, packed_text):
    cfg = head_config(tmp_path, packed_text, steps=2)
    head_trainer(cfg, packed_text).fit()
    torch.manual_seed(0)
    plain = Trainer(cfg, Qwen(nano_config()), PackedRows(packed_text))
    with pytest.raises(ValueError, match=r"holds the task modules \['head'\], this run trains none"):
        plain.fit()
