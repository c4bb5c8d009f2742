"""The demo's sizes, and the one dial (``--minutes``) that scales them together.

A stage's size is its number of optimiser steps. The demo does not guess how fast the machine is:
after packing it times a few steps of the pretraining Trainer (:func:`openqwen.demo.runner.seconds_per_step`) and gives
each training stage its share of the minutes asked for (:data:`STAGE_SHARES`), converted to steps
through the tokens each stage's step processes. Bigger budgets also grow the model
(:func:`preset_for`), as nanochat's depth dial does: more minutes buy a wider, deeper nano Qwen and
more steps for every stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

STAGE_SHARES: dict[str, float] = {
    "pretrain": 0.33, "sft": 0.19, "reward": 0.04, "ppo": 0.08, "code-continue": 0.07, "code-sft": 0.05,
    "math": 0.11, "agent": 0.13,
}
"""Share of the training time each training stage gets (the rest of the budget is the data pipeline,
evaluation and the report, measured as :data:`FIXED_SECONDS`). Tuned on the first timed 15-minute run
(docs/demo.md): SFT got more (instructions were short of 50 % at 468 steps), math less (82.9 % at 312);
then, on a 2-core AMD EPYC that pretrains 1.7x slower than that run's Xeon (10.8K against 17.9K
tokens/s), math and the agent more (math 0.07 -> 0.11: 168 steps gave 35 % arithmetic, 264 gave
77.9 %; agent 0.06 -> 0.13: loop answers 0 % at 172 steps, 57.5 % at 221), from code (code-continue's
96.4 % pass@1 left code-sft nothing to gain: 0.10 + 0.06 -> 0.07 + 0.05), PPO (+17.8 points at 120
steps: 0.10 -> 0.08), SFT and pretraining. Those gains were measured by re-running the later stages on
one run's SFT model; the full timed run with these shares then gave 17.9 % arithmetic after math and
25 % false positives: on this slower machine the goals are not met and vary from run to run."""

FIXED_SECONDS = 60.0
"""Seconds the plan sets aside for the stages after the plan that do not train (long-context check,
evaluation of every model, report): 31 s measured at the 15-minute size on an idle 2-core machine
and 75 s at 60 minutes (docs/demo.md); the margin is for the larger models of longer runs."""


def preset_for(minutes: float) -> str:
    """The model preset the dial picks: ``nano-1m`` up to 2 hours, ``nano-10m`` up to 8 hours,
    ``nano-50m`` beyond (on 2 CPU cores; a GPU affords the larger ones much sooner). The model grows
    only when the steps for it do: at 60 minutes ``nano-10m`` reached no lower validation loss than
    ``nano-1m`` at 15 (2.52 against 2.51) and its chat models were worse (docs/demo.md)."""
    if minutes <= 120:
        return "nano-1m"
    return "nano-10m" if minutes <= 480 else "nano-50m"


@dataclass
class DemoConfig:
    """Everything ``openqwen demo`` runs, with the defaults of the 15-minute dial.

    Step counts are upper bounds: the budget (``minutes``) decides the steps each training stage can
    afford on this machine (``None`` for ``minutes`` trains exactly the steps given here)."""

    minutes: float | None = 15.0
    """The dial: the whole demo's budget in minutes (install excluded). None: no budget, the step
    counts below are used as they are."""
    quick: bool = False
    """Tiny sizes for a smoke run (the slow test): every stage runs, none learns much."""
    corpus_bytes: tuple[int, int, int, int] = (1_500_000, 600_000, 900_000, 1_500_000)
    """Bytes of Shakespeare, Chinese poetry, Python code, arithmetic taken from the demo corpus."""
    pipeline: bool = True
    """Run the cleaning pipeline (False packs the raw demo corpus; for machines without its extras)."""
    vocab_size: int = 4096
    seq_len: int = 256
    """Pretraining length; the long-context check measures perplexity at 1x, 2x and 4x of it."""
    preset: str = ""
    """Model preset; empty: chosen by the dial (:func:`preset_for`)."""
    batch: int = 16
    """Sequences per step of every next-token stage (pretraining, SFT, math; code-continue and agent
    take fewer, longer rows with the same tokens)."""
    pretrain_lr: float = 3e-3
    sft_lr: float = 1e-3
    code_tasks_bytes: int = 1_200_000
    """Bytes of the built-in function tasks' train split (task, solution, asserts) in the code mix of
    continued pretraining (:func:`openqwen.demo.stages.code_mix`)."""
    code_continue_lr: float = 1e-3
    """Code-Qwen's continued pretraining LR: a third of pretraining's, the LR of the specialist runs
    (docs/specialists.md). Not compared here with a tenth (3e-4) once the function tasks were in the
    mix: the tasks, not the LR, took the demo's code-continue pass@1 off 0 % (docs/demo.md)."""
    ppo_lr: float = 2e-5
    """PPO's policy LR (the value model's is 5x, as the report's ratio). ppo-nano.yaml's 1e-4 drove
    the demo's policy off its SFT skills within 188 steps (instructions 76 -> 35 %; docs/demo.md)."""
    ppo_ptx_coef: float = 0.05
    """Weight of the pretraining gradient in PPO. The demo's SFT model sits far from the pretraining
    text (next-token loss 9.3 nats there, the base 2.6), so ppo-nano.yaml's 0.5 pulls it back at the
    expense of its chat skills (arithmetic 78 -> 22 % at LR 2e-5; docs/demo.md)."""
    ppo_kl_coef: float = 0.2
    """PPO's per-token KL penalty against the SFT model (the report: 0.04). The nano reward model checks
    the format, not the held-out sums, and at 0.04 the policy bought reward by moving its numbers too."""
    sft_conversations: int = 6000
    max_steps: dict[str, int] = field(default_factory=lambda: {
        "pretrain": 3000, "sft": 1200, "reward": 300, "ppo": 120, "code-continue": 600, "code-sft": 300,
        "math": 900, "agent": 400})
    """Most steps each training stage may take (the budget usually decides fewer)."""
    min_steps: int = 10
    """Fewest steps of a training stage, however small the budget."""
    eval_items: int = 140
    """Held-out questions per task in the evaluation (instruction, arithmetic, PPO task, math; code
    uses the built-in held-out function tasks)."""
    threads: int = 2
    seed: int = 0

    @classmethod
    def for_minutes(cls, minutes: float | None) -> "DemoConfig":
        """The dial's sizes: the model preset grows with the minutes (:func:`preset_for`), and a
        larger model gets proportionally larger step caps so the budget, not the cap, binds."""
        dc = cls(minutes=minutes)
        if minutes is not None:
            if minutes <= 0:
                raise ValueError(f"--minutes must be positive, got {minutes}")
            scale = max(1.0, minutes / 15.0)
            dc.max_steps = {k: int(v * scale) for k, v in dc.max_steps.items()}
        return dc

    @classmethod
    def make_quick(cls) -> "DemoConfig":
        """Every stage at a size that runs in a few minutes on a busy 2-core machine (the slow test)."""
        return cls(minutes=None, quick=True, corpus_bytes=(60_000, 30_000, 40_000, 60_000), vocab_size=512,
                   code_tasks_bytes=40_000,
                   seq_len=128, batch=8, sft_conversations=600, eval_items=14, min_steps=2,
                   max_steps={"pretrain": 30, "sft": 20, "reward": 10, "ppo": 4, "code-continue": 10,
                              "code-sft": 8, "math": 10, "agent": 8})

    def model_preset(self) -> str:
        return self.preset or preset_for(self.minutes if self.minutes is not None else 15.0)

    def set_field(self, key: str, value: Any) -> None:
        """One ``--set FIELD=VALUE`` (``max_steps.sft=500`` sets one stage's cap); ValueError says
        what the field takes when the value is of the wrong kind."""
        names = {f.name for f in dataclasses.fields(self)}
        if key.startswith("max_steps."):
            stage = key.split(".", 1)[1]
            if stage not in self.max_steps:
                raise ValueError(f"--set {key}: no stage {stage!r}; stages: {', '.join(self.max_steps)}")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"--set {key}={value}: takes a whole number of steps >= 1")
            self.max_steps[stage] = value
            return
        if key not in names or key in ("max_steps", "corpus_bytes"):
            raise ValueError(f"--set {key}: expected FIELD=VALUE with FIELD one of "
                             f"{', '.join(sorted(names - {'max_steps', 'corpus_bytes'}))} or max_steps.STAGE")
        current = getattr(self, key)
        if key == "minutes" and value is None:
            self.minutes = None
            return
        for kind in (bool, int, float, str):  # a value of the field's kind (an int is a fine float)
            if isinstance(current, kind):
                wrong = (not isinstance(value, kind) and not (kind is float and isinstance(value, int))) \
                    or (kind is not bool and isinstance(value, bool))
                if wrong:
                    what = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}[kind]
                    raise ValueError(f"--set {key}={value}: {key} takes {what}, e.g. {key}={current}")
                break
        setattr(self, key, value)
