"""The main job at its quick size, end to end (corpus -> pipeline -> tokenizer -> pretrain -> SFT -> report)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    from openqwen import QwenTokenizer, load_model
    from openqwen.demo import DemoConfig, run

    dc = DemoConfig.make_quick()
    dc.threads = 1
    result = run(tmp_path, dc)
    report = (tmp_path / "report.md").read_text()
    assert "Held-out arithmetic" in report and "openqwen chat --model" in report
    assert (tmp_path / "loss_curves.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "demo.json").read_text())
    assert saved["accuracy_after"] == result["accuracy_after"] and 0.0 <= result["accuracy_before"] <= 1.0
    for stage in ("pretrain", "sft"):
        model = load_model(tmp_path / stage)
        assert QwenTokenizer.from_pretrained(tmp_path / stage).vocab_size <= model.config.vocab_size
        records = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if r["kind"] == "train"]
        assert len(losses) == (dc.pretrain_steps if stage == "pretrain" else dc.sft_steps)
        assert min(losses[-5:]) < losses[0]  # both stages learn
    # a second run finds every stage done and only re-evaluates
    again = run(tmp_path, dc)
    assert again["timings"]["pretrain"] < result["timings"]["pretrain"]


def test_steps_shrink_to_fit_the_time_budget():
    from openqwen.demo import DemoConfig, fit_budget

    dc = DemoConfig()  # 1000 + 500 steps, 14-minute budget
    assert fit_budget(dc, elapsed=90, step_s=0.42) == (1000, 500)  # a fast machine trains the full recipe
    pre, post = fit_budget(dc, elapsed=90, step_s=1.0)
    assert (pre, post) == (440, 220) and pre + post * dc.sft_batch / dc.pretrain_batch <= (840 - 180) / 1.0
    dc.time_budget_s = None
    assert fit_budget(dc, elapsed=10_000, step_s=100.0) == (1000, 500)
