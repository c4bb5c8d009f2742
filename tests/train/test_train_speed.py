"""Training-speed options: precision chosen by a hardware check, regional torch.compile."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from openqwen import Qwen
from openqwen.config import get_preset
from openqwen.train import cpu_matmul
from openqwen.train import precision as prec
from openqwen.train.batches import PackedRows
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.pretrain import build_model

NANO = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def test_auto_precision_follows_the_cpu_flags(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2", "avx512f", "avx512bw"})  # emulated bf16
    assert prec.resolve_precision("auto", cpu, 40e9)[0] == "fp32"
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    assert prec.resolve_precision("auto", cpu) == ("bf16", "auto: this CPU has avx512_bf16, native bf16 matmuls")
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})
    assert prec.resolve_precision("auto", cpu)[0] == "bf16"
    assert prec.resolve_precision("fp32", cpu) == ("fp32", "as configured")
    assert prec.resolve_precision("bf16", cpu, 1.0) == ("bf16", "as configured")  # named: never second-guessed
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        prec.resolve_precision("fp16", cpu)


def test_auto_precision_on_a_native_bf16_cpu_follows_the_step_size(monkeypatch):
    """bf16 autocast lost to fp32 below ~1 GFLOP a step even with AVX512-BF16 (its casts), won above."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512f", "avx512_bf16"})
    demo = get_preset("nano-1m", vocab_size=4096, seq_length=256)
    # the step's FLOPs, counted independently: 6 x parameters + 12 x layers x heads x head_dim x context
    params = sum(p.numel() for p in Qwen(demo).parameters())
    expected = (6 * params + 12 * 4 * 4 * 32 * 256) * 16 * 256
    assert prec.step_flops(demo, 16) == pytest.approx(expected)
    choice, why = prec.resolve_precision("auto", cpu, prec.step_flops(demo, 16))
    assert choice == "bf16" and "avx512_bf16" in why and "39 GFLOP" in why
    toy = get_preset("nano-1m", vocab_size=257, seq_length=64, **NANO)
    choice, why = prec.resolve_precision("auto", cpu, prec.step_flops(toy, 4))
    assert choice == "fp32" and "casts cost more" in why


def _cfg(out: Path, data: Path, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.batch_size": 4, "train.max_steps": 3,
            "optim.lr": 3e-3, "optim.warmup_steps": 1, "train.progress": False, "train.peak_flops": 1e10,
            "train.tensorboard": False, "train.plot": False, "model.overrides": NANO}
    base.update(over)
    return TrainConfig.load(None, base)


def test_trainer_prints_its_precision_choice(tmp_path, packed_text, capsys, monkeypatch):
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2"})
    rows = PackedRows(packed_text)
    trainer = Trainer(_cfg(tmp_path, packed_text), build_model(_cfg(tmp_path, packed_text), 257, 64), rows)
    assert trainer.precision == "fp32"
    assert "precision fp32 (auto: this CPU has no AMX-BF16/AVX512-BF16" in capsys.readouterr().err
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx512_bf16"})  # native, but the test model is a toy
    trainer = Trainer(_cfg(tmp_path, packed_text), build_model(_cfg(tmp_path, packed_text), 257, 64), rows)
    assert trainer.precision == "fp32" and "casts cost more" in capsys.readouterr().err
    # the step is judged by the data's 64-token rows; a task with its own batch shapes passes flops
    assert prec.step_flops(trainer.model.config, 4, rows.seq_len) < prec.CPU_BF16_MIN_STEP_FLOPS
    big = Trainer(_cfg(tmp_path, packed_text), build_model(_cfg(tmp_path, packed_text), 257, 64), rows, flops=5e9)
    assert big.precision == "bf16" and "at a step of 5 GFLOP" in capsys.readouterr().err
    with pytest.raises(ValueError, match="compile_scope"):
        Trainer(_cfg(tmp_path, packed_text, **{"train.compile_scope": "layers"}),
                build_model(_cfg(tmp_path, packed_text), 257, 64), rows)


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["blocks", "model"])
def test_compiled_training_follows_the_eager_loss_curve(tmp_path, packed_text, scope):
    """Three steps with torch.compile (regional or whole-model) give the eager run's losses to 1e-5."""
    rows = PackedRows(packed_text)
    curves = {}
    for name, over in {"eager": {}, "compiled": {"train.compile": True, "train.compile_scope": scope}}.items():
        cfg = _cfg(tmp_path / name, packed_text, **over)
        torch.manual_seed(0)
        trainer = Trainer(cfg, build_model(cfg, 257, 64), rows)
        curves[name] = [trainer.train_step()["loss"] for _ in range(3)]
    assert curves["eager"][-1] < curves["eager"][0]
    assert max(abs(a - b) for a, b in zip(curves["eager"], curves["compiled"])) < 1e-5


@pytest.mark.skipif(not cpu_matmul.onednn_available(), reason="this torch build has no oneDNN")
def test_trainer_runs_fp32_linears_on_the_library_it_prints(tmp_path, packed_text, capsys, monkeypatch):
    """train.cpu_matmul auto: oneDNN on a non-Intel CPU, MKL on Intel; the same loss curve either way."""
    monkeypatch.setattr(prec, "cpu_flags", lambda: {"avx2"})
    rows = PackedRows(packed_text)
    curves = {}
    for vendor, library in (("AuthenticAMD", "onednn"), ("GenuineIntel", "mkl")):
        monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda v=vendor: v)
        cfg = _cfg(tmp_path / library, packed_text)
        torch.manual_seed(0)
        trainer = Trainer(cfg, build_model(cfg, 257, 64), rows)
        assert trainer.cpu_matmul == library and f"fp32 matmuls on {library} (auto: " in capsys.readouterr().err
        assert cpu_matmul.runs_on_onednn(trainer.model.lm_head) == (library == "onednn")
        curves[library] = [trainer.train_step()["loss"] for _ in range(3)]
    assert curves["mkl"][-1] < curves["mkl"][0]
    assert max(abs(a - b) for a, b in zip(curves["mkl"], curves["onednn"])) < 1e-5
    with pytest.raises(ValueError, match="train.cpu_matmul must be one of"):
        Trainer(_cfg(tmp_path, packed_text, **{"train.cpu_matmul": "openblas"}),
                build_model(_cfg(tmp_path, packed_text), 257, 64), rows)
