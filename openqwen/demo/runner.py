"""``openqwen demo``'s driver: the stages in order, a budget plan, resume, evaluation, the report.

Each finished stage is recorded in ``OUT/stages.json`` (its seconds, summary and one-line result);
a stage with a record is skipped on the next run with the same ``--out``, and a stage that was cut
off mid-way resumes from its trainer's last checkpoint. The budget plan (steps per training stage)
is decided once, from a timing of the pretraining step on this machine, written to
``OUT/plan.json`` and kept on resume, so a resumed demo trains exactly the steps it planned.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from openqwen.data.io import atomic_write_json

from . import scores, stages
from .config import FIXED_SECONDS, STAGE_SHARES, DemoConfig
from .report import write_report
from .stages import DemoRun, log

STEP_COST: dict[str, float] = {
    "pretrain": 0.9, "sft": 0.85, "reward": 0.87, "ppo": 1.5, "code-continue": 1.12, "code-sft": 1.2, "math": 0.87,
    "agent": 1.23,
}
"""Seconds of one step of each training stage, in timed pretraining steps (:func:`seconds_per_step`),
stage overhead (loading, saving, the stage's own evaluation) included: measured on the timed 15-minute
runs on an idle 2-core machine (docs/demo.md). Chat rows are shorter than pretraining rows
(< 1); code-continue's 4x longer rows, code chats and the agent's ReAct prompts cost more attention; a
PPO step carries a quarter of a rollout (generation, reference, value and reward forwards)."""


def seconds_per_step(cfg: Any, steps: int = 8, warmup: int = 3) -> float:
    """Seconds of one ``Trainer.train_step`` of the pretraining run ``cfg`` describes, on its data and
    with the model ``pretrain.run`` builds (the median after ``warmup`` steps), in a trainer made for
    the measurement and dropped. The first trainer of a process is slow for a few steps (allocator and
    kernel caches): with one warm-up step a 2-core Xeon read 0.44 s, twice its real 0.21 s."""
    import torch

    from openqwen.train.batches import PackedRows
    from openqwen.train.loop import Trainer
    from openqwen.train.pretrain import load_tokenizer, pretrain_model

    rows = PackedRows(cfg.data.path)
    trainer = Trainer(cfg, pretrain_model(cfg, rows, load_tokenizer(cfg.data.tokenizer)), rows, name="timing")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        if trainer.info.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:])


def plan_steps(dc: DemoConfig, elapsed: float, step_s: float) -> dict[str, int]:
    """Steps of every training stage: its share of the budget left after ``elapsed`` seconds and the
    fixed stages, at ``step_s`` seconds per pretraining step, between ``min_steps`` and its cap."""
    if dc.minutes is None:
        return dict(dc.max_steps)
    left = max(0.0, dc.minutes * 60 - elapsed - FIXED_SECONDS)
    return {s: max(dc.min_steps, min(cap, int(STAGE_SHARES[s] * left / (step_s * STEP_COST[s]))))
            for s, cap in dc.max_steps.items() if s in STAGE_SHARES}


def replan_stage(dc: DemoConfig, plan: dict[str, Any], records: dict[str, Any], stage: str) -> int:
    """Steps of a training stage after pretraining, decided just before it starts: its share of the
    minutes left now among the training stages not yet run, at the rate pretraining really ran (its
    seconds over its planned cost). The timing before the plan sees a few warm-up steps only (on one
    2-core Xeon it read 0.44 s per step, the run then took 0.21), and ``STEP_COST`` is an average over
    machines; re-planning from what the run measured keeps the whole demo on its budget."""
    rate = records["pretrain"]["seconds"] / (plan["steps"]["pretrain"] * STEP_COST["pretrain"])
    elapsed = sum(r.get("seconds", 0) for r in records.values())
    left = max(0.0, dc.minutes * 60 - elapsed - FIXED_SECONDS)
    remaining = [s for s in STAGE_SHARES if s != "pretrain" and s not in records]
    share = STAGE_SHARES[stage] / sum(STAGE_SHARES[s] for s in remaining)
    return max(dc.min_steps, min(dc.max_steps[stage], int(share * left / (rate * STEP_COST[stage]))))


def estimate_seconds(plan: dict[str, int], step_s: float) -> float:
    """The planned training seconds plus the fixed stages: the estimate printed before training."""
    return FIXED_SECONDS + sum(n * step_s * STEP_COST[s] for s, n in plan.items())


class Records:
    """``stages.json``: what every finished stage measured, rewritten atomically after each stage."""

    def __init__(self, out: Path) -> None:
        self.path = out / "stages.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name in self.data:
            log(f"stage {name}: done in an earlier run ({self.data[name].get('info', '')})")
            return self.data[name]
        log(f"stage {name}")
        t0 = time.perf_counter()
        res = json.loads(json.dumps(fn(), default=str))  # as a resumed run reads it back (lists, str keys)
        res["seconds"] = time.perf_counter() - t0
        self.data[name] = res
        atomic_write_json(self.path, self.data)
        log(f"stage {name}: {res['seconds']:.0f} s  {res.get('info', '')}")
        return res


def _plots(run: DemoRun, records: Records) -> list[str]:
    from openqwen.eval.tasks.perplexity import plot_curves
    from openqwen.train.metrics import plot_loss_curves, read_metrics

    runs = {name: read_metrics(run.path(name)) for name in ("pretrain", "sft", "code-continue", "math")
            if run.path(name, "metrics.jsonl").exists()}
    plots = []
    if runs:
        plot_loss_curves(runs, run.path("loss_curves.png"), title="nano Qwen family: training loss (validation dashed)")
        plots.append("loss_curves.png")
    curves = records.data.get("long-context", {}).get("curves")
    if curves:
        plot_curves({k: {int(L): v for L, v in c.items()} for k, c in curves.items()}, run.path("long_context.png"),
                    training_length=run.dc.seq_len, title="base model past its training length")
        plots.append("long_context.png")
    if run.path("ppo", "ppo.png").exists():
        plots.append("ppo/ppo.png")
    return plots


def run(out: str | Path, dc: DemoConfig) -> dict[str, Any]:
    """The whole demo into ``out``; returns the records (also in ``out/demo.json``)."""
    import torch

    torch.set_num_threads(dc.threads)
    run_ = DemoRun(Path(out), dc)
    run_.out.mkdir(parents=True, exist_ok=True)
    rec = Records(run_.out)
    rec.run("corpus", lambda: stages.corpus(run_))
    clean = Path(rec.run("pipeline", lambda: stages.pipeline(run_))["output"])
    rec.run("tokenizer", lambda: stages.tokenizer(run_, clean))
    packed = rec.run("pack", lambda: stages.pack(run_, clean))
    heldout = scores.heldout_questions(dc.eval_items, dc.seed)
    sets = rec.run("training sets", lambda: stages.training_chats(run_, {q.strip() for qs in heldout.values()
                                                                         for q in qs}))
    files = sets["paths"]
    rec.run("held-out check", lambda: stages.heldout_check(run_, heldout, files))

    plan_path = run_.path("plan.json")
    if plan_path.exists():
        plan = json.loads(plan_path.read_text())
    else:
        step_s = seconds_per_step(stages.pretrain_config(run_, 10, packed["num_sequences"])) if dc.minutes else 0.0
        elapsed = sum(r.get("seconds", 0) for r in rec.data.values())
        plan = {"step_s": step_s, "steps": plan_steps(dc, elapsed, step_s)}
        if dc.minutes:
            plan["estimate_s"] = elapsed + estimate_seconds(plan["steps"], step_s)
        atomic_write_json(plan_path, plan)
    steps = plan["steps"]
    if plan.get("estimate_s"):
        log(f"plan for {dc.minutes:g} minutes ({plan['step_s']:.2f} s per pretraining step here): "
            + ", ".join(f"{s} {n}" for s, n in steps.items()) + f" steps; estimate {plan['estimate_s'] / 60:.1f} min")

    rec.run("pretrain", lambda: stages.pretrain(run_, steps["pretrain"], packed["num_sequences"]))
    val_sequences = max(1, min(32, packed["num_sequences"] // 10))
    text = scores.heldout_text(run_.path("packed"), val_sequences, stages.load_demo_tokenizer(run_),
                               run_.path("eval", "heldout.txt"))
    layers = json.loads(run_.path("pretrain", "config.json").read_text())["num_hidden_layers"]
    rec.run("long-context", lambda: {"curves": scores.long_context_shape(run_.model("base"), text, dc.seq_len,
                                                                         layers), "info": "perplexity at 1x, 2x, 4x"})
    for name, fn in stages.TRAINING_STAGES.items():
        if dc.minutes and name not in rec.data and name not in plan.setdefault("replanned", []):
            planned, steps[name] = steps[name], replan_stage(dc, plan, rec.data, name)
            plan["replanned"].append(name)  # decided once: a resumed stage keeps its steps
            atomic_write_json(plan_path, plan)
            log(f"{name}: {steps[name]} steps (planned {planned}; re-planned from the time left and "
                f"pretraining's measured rate)")
        rec.run(name, lambda fn=fn, name=name: fn(run_, steps[name]))
    reward_dir = run_.path("reward")
    for name in scores.MODEL_METRICS:
        rec.run(f"eval:{name}", lambda name=name: scores.evaluate_model(
            name, run_.model(name), dc.eval_items, reward_dir, log, Path(sets["agent_cases"])))
    md, page = write_report(run_.out, rec.data, dc.quick, _plots(run_, rec))
    log(f"report: {page} (and {md.name})")
    for name in scores.MODEL_METRICS:
        log(f"chat with {name}:  openqwen chat --model {run_.model(name)}")
    return rec.data
