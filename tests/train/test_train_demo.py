"""The main job at its quick size, end to end (corpus -> pipeline -> tokenizer -> pretrain -> SFT -> report)."""

from __future__ import annotations

import json
import re

import pytest


def _recount(rows: list) -> float:
    """Accuracy recomputed from the saved replies: the answer is worked out from the question's own
    text, and a reply is right when the last number in it is that answer."""
    right = 0
    for question, reply, answer in rows:
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", question).groups()
        expected = int(a) + int(b) if op == "+" else int(a) - int(b)
        assert answer == expected, question
        numbers = re.findall(r"-?[0-9]+", reply)
        right += bool(numbers) and int(numbers[-1]) == expected
    return right / len(rows)


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    from openqwen import QwenTokenizer, load_model
    from openqwen.demo import DemoConfig, run
    from openqwen.train.sft_data import heldout_arithmetic

    dc = DemoConfig.make_quick()
    dc.threads = 1
    run(tmp_path, dc)
    report = (tmp_path / "report.md").read_text()
    assert "Held-out arithmetic" in report and "openqwen chat --model" in report
    assert (tmp_path / "loss_curves.png").stat().st_size > 5000
    saved = json.loads((tmp_path / "demo.json").read_text())
    for when in ("before", "after"):
        rows = saved[f"arithmetic_{when}"]
        # the configured number of held-out questions, each asked once
        assert [q for q, _, _ in rows] == [q for q, _ in heldout_arithmetic(dc.eval_questions)]
        assert saved[f"accuracy_{when}"] == _recount(rows)
        assert f"{when} SFT" in report and f"**{saved[f'accuracy_{when}']:.0%}**" in report
    logs = {}
    for stage in ("pretrain", "sft"):
        model = load_model(tmp_path / stage)
        assert QwenTokenizer.from_pretrained(tmp_path / stage).vocab_size <= model.config.vocab_size
        logs[stage] = (tmp_path / stage / "metrics.jsonl").read_text()
        records = [json.loads(line) for line in logs[stage].splitlines()]
        losses = [r["loss"] for r in records if r["kind"] == "train"]
        assert len(losses) == (dc.pretrain_steps if stage == "pretrain" else dc.sft_steps)
        assert min(losses[-5:]) < losses[0]  # both stages learn
    # a second run finds every stage done: the trainers resume at their last step and train nothing
    run(tmp_path, dc)
    for stage in ("pretrain", "sft"):
        assert json.loads((tmp_path / stage / "summary.json").read_text())["resumed"] is True
        assert (tmp_path / stage / "metrics.jsonl").read_text() == logs[stage]


def test_seconds_per_step_times_the_trainers_own_step(packed_text, monkeypatch):
    from openqwen import demo
    from openqwen.train.config import TrainConfig
    from openqwen.train.loop import Trainer

    clock, durations, calls = [0.0], iter([5.0, 1.0, 3.0, 2.0]), []

    def train_step(self):  # stands in for the real step: advances a fake clock by a known time
        calls.append(self)
        clock[0] += next(durations)
        return {}

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(demo.time, "perf_counter", lambda: clock[0])
    cfg = TrainConfig.load(None, {"data.path": str(packed_text), "train.batch_size": 2, "train.progress": False,
                                  "model.overrides": {"hidden_size": 64, "intermediate_size": 128,
                                                      "num_hidden_layers": 1, "num_attention_heads": 4,
                                                      "num_key_value_heads": 2}})
    assert demo.seconds_per_step(cfg) == 2.0  # the median of 1, 3, 2: the warm-up step is left out
    assert len(calls) == 4 and all(t is calls[0] for t in calls)  # every step of one trainer
    assert calls[0].model.config.hidden_size == 64 and calls[0].source.batch_size == 2


def test_steps_shrink_to_fit_the_time_budget():
    from openqwen.demo import DemoConfig, fit_budget

    dc = DemoConfig()  # 1000 + 500 steps, 14-minute budget
    assert fit_budget(dc, elapsed=90, step_s=0.42) == (1000, 500)  # a fast machine trains the full recipe
    pre, post = fit_budget(dc, elapsed=90, step_s=1.0)
    assert (pre, post) == (440, 220) and pre + post * dc.sft_batch / dc.pretrain_batch <= (840 - 180) / 1.0
    dc.time_budget_s = None
    assert fit_budget(dc, elapsed=10_000, step_s=100.0) == (1000, 500)
