"""DPO: frozen reference log-probs against the engine's scorer, the loss against a formula by hand,
log 2 at the start, and preferences learnt through the one Trainer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from openqwen.align import synthetic
from openqwen.align.dpo import DPORows, DPOTask, reference_logps
from openqwen.align.pairs import encode_pairs
from openqwen.infer.engine import Engine
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from reward_helpers import EOT, QUICK, ByteChatTokenizer, base_dir, tiny_qwen  # noqa: F401 (base_dir: a fixture)


def _rows(model, n, split="train", seed=0):
    encoded, _ = encode_pairs(synthetic.preference_pairs(split, n, seed), ByteChatTokenizer(), 96)
    return encoded, DPORows(encoded, 96, EOT, model, batch_size=5)


def _batch(rows, idx):
    return {k: torch.as_tensor(np.stack([rows[i][k] for i in idx])) for k in rows[0]}


def test_reference_logps_equal_the_engine_scorer():
    model = tiny_qwen(seed=2)
    encoded, rows = _rows(model, 7)
    engine = Engine(model, ByteChatTokenizer(), max_batch_size=4, background=False, max_seq_len=128)
    try:
        chosen = engine.score([p.prompt for p in encoded], [p.chosen for p in encoded])
        rejected = engine.score([p.prompt for p in encoded], [p.rejected for p in encoded])
    finally:
        engine.close()
    np.testing.assert_allclose(rows.ref_chosen, [s.total for s in chosen], rtol=0, atol=1e-3)
    np.testing.assert_allclose(rows.ref_rejected, [s.total for s in rejected], rtol=0, atol=1e-3)


def test_dpo_loss_is_log2_at_the_start_and_matches_the_formula():
    model = tiny_qwen(seed=3)
    _, rows = _rows(model, 6)
    batch = _batch(rows, range(6))
    task = DPOTask(beta=0.5)
    with torch.no_grad():
        loss, metrics = task.loss(model.eval(), batch)
    assert float(loss) == pytest.approx(6 * math.log(2), rel=1e-5)  # policy == reference
    # a shifted reference: the formula by hand on the reference's own log-probs
    batch["ref_chosen_logp"] = batch["ref_chosen_logp"] + torch.tensor([0.3, -1.0, 0.0, 2.0, 0.5, -0.2])
    with torch.no_grad():
        loss, metrics = task.loss(model, batch)
    z = 0.5 * ((rows.ref_chosen - batch["ref_chosen_logp"].double().numpy()) - 0.0)
    assert float(loss) == pytest.approx(np.sum(np.log1p(np.exp(-z))), rel=1e-4)
    assert float(metrics["accuracy"]) == np.sum(z > 0)


def test_dpo_through_the_trainer_prefers_chosen_on_heldout_pairs(tmp_path):
    model = tiny_qwen(seed=4)
    _, rows = _rows(model, 200)
    _, val = _rows(model, 32, "heldout")
    cfg = TrainConfig.load(None, {"train.out_dir": str(tmp_path), "train.max_steps": 12, "train.batch_size": 8,
                                  "optim.lr": 3e-3, "optim.warmup_steps": 2, "optim.schedule": "constant",
                                  "train.progress": False, "train.tensorboard": False, "train.peak_flops": 1e10, "train.plot": False,
                                  "train.eval_batches": 4})
    summary = Trainer(cfg, model, rows, task=DPOTask(beta=0.5), val_data=val, name="dpo").fit()
    assert summary["val_loss"] < math.log(2) - 0.2  # log 2 at the start (policy == reference)
    assert summary["val_accuracy"] > 0.65 and summary["val_reward_margin"] > 0


def test_dpo_cli_runs_on_the_builtin_task(tmp_path, base_dir, capsys):
    from openqwen import load_model
    from openqwen.cli import main

    out = tmp_path / "dpo"
    rc = main(["dpo", "--config", "dpo-nano.yaml", "--model.init_from", str(base_dir), "--train.out_dir", str(out),
               "--train.max_steps", "2", "--dpo.builtin_train_size", "16", "--dpo.builtin_val_size", "8",
               "--dpo.heldout_prompts", "4", *QUICK])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.split("model written")[0])
    assert summary["steps"] == 2 and {"heldout_task_accuracy", "heldout_score", "val_accuracy"} <= summary.keys()
    tuned, start = load_model(out), load_model(base_dir)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), start.state_dict().values()))


def test_dpo_help_teaches(capsys):
    from openqwen.cli import main

    with pytest.raises(SystemExit) as e:
        main(["dpo", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "dpo.beta" in text and "examples:" in text and "frozen" in text
