"""The training loop on real text: learning, accumulation, exact resume (also after SIGKILL in a save),
and export to transformers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openqwen.train.batches import IGNORE_INDEX, PackedRows
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.pretrain import build_model
from openqwen.train.sources import BatchStream
from openqwen.train.tasks import NextTokenTask
from openqwen.train.metrics import read_metrics


NANO = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def make_cfg(out: Path, data: Path, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.batch_size": 4, "train.max_steps": 8,
            "optim.lr": 3e-3, "optim.warmup_steps": 2, "train.progress": False, "train.peak_flops": 1e10,
            "train.tensorboard": False, "model.overrides": NANO}
    base.update(over)
    return TrainConfig.load(None, base)


def train(cfg: TrainConfig, data: Path, val=None) -> tuple[Trainer, dict]:
    """The model is built from the config as ``openqwen pretrain`` builds it (preset + model.overrides)."""
    rows = PackedRows(data)
    model = build_model(cfg, rows.ds.vocab_size, rows.seq_len)
    trainer = Trainer(cfg, model, rows, val_data=val)
    return trainer, trainer.fit()


def test_the_model_is_built_as_the_config_says(packed_text):
    cfg = make_cfg(Path("unused"), packed_text, **{"model.dropout": 0.1})
    model = build_model(cfg, 257, 64)
    for key, value in NANO.items():
        assert getattr(model.config, key) == value, key
    # the vocabulary rounds up to a multiple of 64; the context is the packed rows' length
    assert (model.config.vocab_size, model.config.seq_length, model.config.dropout) == (320, 64, 0.1)
    assert model.embed_tokens.weight.shape == (320, 64) and len(model.layers) == 2


def test_loss_falls_on_real_text(tmp_path, packed_text):
    rows = PackedRows(packed_text)
    val = PackedRows(rows.ds, len(rows) - 8)
    cfg = make_cfg(tmp_path, packed_text, **{"train.max_steps": 60, "train.eval_every": 30, "train.batch_size": 8})
    trainer, summary = train(cfg, packed_text, val)
    recs = read_metrics(tmp_path)
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    vals = [r["val_loss"] for r in recs if r["kind"] == "val"]
    assert losses[0] > 5.0  # ~ln(257) at init
    assert sum(losses[-5:]) / 5 < 3.3  # bytes of Python source: well below the uniform 5.55 nats
    assert len(vals) == 2 and vals[-1] < 3.3 and vals[-1] < vals[0] + 0.05
    # throughput counts, against the batch shape and the FLOP formula written out here
    c = trainer.model.config
    flops_per_token = 6 * sum(p.numel() for p in trainer.model.parameters()) + 12 * 2 * 4 * 16 * 64
    stream = BatchStream(rows, 8, cfg.data.seed)
    for rec in (r for r in recs if r["kind"] == "train"):
        labels = stream.next()["labels"]
        assert rec["tokens"] == 8 * 64 and rec["units"] == int((labels[:, 1:] != IGNORE_INDEX).sum())
        assert rec["tokens_per_s"] == pytest.approx(rec["tokens"] / rec["step_time_s"])
        assert rec["flops_per_s"] == pytest.approx(flops_per_token * rec["tokens"] / rec["step_time_s"])
        assert rec["mfu"] == pytest.approx(rec["flops_per_s"] / 1e10)
    assert (c.num_hidden_layers, c.num_attention_heads, c.head_dim) == (2, 4, 16)
    assert recs[0]["lr"] == pytest.approx(3e-3 / 2)  # the first warm-up step of 2
    assert (tmp_path / "loss.png").stat().st_size > 1000


class _NaNTask(NextTokenTask):
    def loss(self, model, batch, modules=None):
        loss, metrics = super().loss(model, batch, modules)
        return loss * float("nan"), metrics


def test_a_nan_loss_stops_the_run_and_says_what_to_change(tmp_path, packed_text):
    rows = PackedRows(packed_text)
    trainer = Trainer(make_cfg(tmp_path, packed_text), build_model(make_cfg(tmp_path, packed_text), 257, 64), rows,
                      task=_NaNTask())
    with pytest.raises(FloatingPointError, match="loss became nan at step 1; lower optim.lr or raise warmup_steps"):
        trainer.fit()


def test_grad_accumulation_equals_a_bigger_batch(tmp_path, packed_text):
    a, _ = train(make_cfg(tmp_path / "a", packed_text, **{"train.batch_size": 4, "train.max_steps": 3}), packed_text)
    b, _ = train(make_cfg(tmp_path / "b", packed_text, **{"train.batch_size": 2, "train.grad_accum": 2,
                                                           "train.max_steps": 3}), packed_text)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5, msg=n)


def test_resume_in_process_is_bitwise(tmp_path, packed_text):
    full, _ = train(make_cfg(tmp_path / "full", packed_text, **{"model.dropout": 0.1}), packed_text)
    # same run stopped at step 4 (checkpoint), then a new process-like Trainer continues to 8
    half_cfg = make_cfg(tmp_path / "half", packed_text, **{"model.dropout": 0.1, "train.stop_after": 4})
    train(half_cfg, packed_text)
    resumed, summary = train(make_cfg(tmp_path / "half", packed_text, **{"model.dropout": 0.1}), packed_text)
    assert summary["resumed"]
    for (n, p), (_, q) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p, q), n
    assert [r["loss"] for r in read_metrics(tmp_path / "full")] == [r["loss"] for r in read_metrics(tmp_path / "half")]


def _cli(out: Path, data: Path, steps: int = 10, env_extra: dict | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "openqwen.cli", "pretrain", "--data.path", str(data), "--train.out_dir", str(out),
            "--train.max_steps", str(steps), "--train.batch_size", "4", "--train.save_every", "2",
            "--train.keep_last", "2", "--optim.lr", "3e-3", "--optim.warmup_steps", "2", "--model.dropout", "0.1",
            "--model.overrides", json.dumps(NANO), "--train.threads", "1", "--train.progress", "false",
            "--train.peak_flops", "1e10", "--train.tensorboard", "false"]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _reference(tmp_path: Path, data: Path) -> tuple[dict[str, torch.Tensor], list]:
    """The uninterrupted run, in this process (one thread, like the CLI runs below)."""
    cfg = make_cfg(tmp_path / "ref", data, **{"train.max_steps": 10, "model.dropout": 0.1, "train.save_every": 2})
    trainer, _ = train(cfg, data)
    trainer.export(tmp_path / "ref")
    return _final_state(tmp_path / "ref"), [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "ref")]


def _assert_same_run(ref: tuple, run: Path) -> None:
    state, losses = ref
    got = _final_state(run)
    assert state.keys() == got.keys()
    for k in state:
        assert torch.equal(state[k], got[k]), k
    assert [(r["step"], r["loss"]) for r in read_metrics(run)] == losses


def test_sigkill_during_a_save_then_resume_is_bitwise(tmp_path, packed_text):
    ref = _reference(tmp_path, packed_text)
    run = tmp_path / "run"
    # SIGKILL in the middle of the step-4 save: state files written, folder not yet renamed
    p = _cli(run, packed_text, env_extra={"OPENQWEN_CRASH_AT": "save:4:before-rename"})
    assert p.wait(timeout=300) == -signal.SIGKILL
    names = sorted(x.name for x in (run / "checkpoints").iterdir())
    assert names == ["step_00000002", "step_00000004.tmp"]
    p = _cli(run, packed_text)  # resumes from step 2, deletes the partial folder
    assert p.wait(timeout=300) == 0, p.stdout.read()
    _assert_same_run(ref, run)
    assert len(list((run / "checkpoints").iterdir())) == 2  # keep_last


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bitwise(tmp_path, packed_text):
    ref = _reference(tmp_path, packed_text)
    run = tmp_path / "run"
    for delay in (4.0, 6.5):  # wherever these land: import, a step, a save
        p = _cli(run, packed_text)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    p = _cli(run, packed_text)
    assert p.wait(timeout=300) == 0, p.stdout.read()
    _assert_same_run(ref, run)


def test_export_loads_in_transformers_with_same_logits(tmp_path, packed_text):
    transformers = pytest.importorskip("transformers")
    trainer, _ = train(make_cfg(tmp_path, packed_text, **{"train.max_steps": 3}), packed_text)
    trainer.export(tmp_path / "export")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    ids = torch.randint(0, 257, (2, 20))
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, trainer.model(ids), atol=1e-4, rtol=0)
