"""The demo's timing of this machine: it times the pretraining Trainer's own step (the rest of the
demo's tests are in tests/demo/)."""

from __future__ import annotations


def test_seconds_per_step_times_the_trainers_own_step(packed_text, monkeypatch):
    from openqwen.demo import runner as demo
    from openqwen.train.config import TrainConfig
    from openqwen.train.loop import Trainer

    clock, durations, calls = [0.0], iter([9.0, 7.0, 5.0, 1.0, 3.0, 2.0]), []

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
    assert demo.seconds_per_step(cfg, steps=6, warmup=3) == 2.0  # the median of 1, 3, 2: warm-up steps left out
    assert len(calls) == 6 and all(t is calls[0] for t in calls)  # every step of one trainer
    assert calls[0].model.config.hidden_size == 64 and calls[0].source.batch_size == 2
