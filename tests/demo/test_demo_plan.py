"""The demo's dial and budget plan: shares of the minutes, step caps, the estimate."""

from __future__ import annotations

import pytest

from openqwen.demo.config import FIXED_SECONDS, STAGE_SHARES, DemoConfig, preset_for
from openqwen.demo.runner import STEP_COST, estimate_seconds, plan_steps, replan_stage


def test_plan_gives_each_stage_its_share_of_the_budget():
    dc = DemoConfig.for_minutes(15)
    dc.max_steps = {s: 10**6 for s in dc.max_steps}  # no cap binds
    plan = plan_steps(dc, elapsed=60.0, step_s=0.5)
    left = 15 * 60 - 60 - FIXED_SECONDS
    for stage, n in plan.items():
        assert n == int(STAGE_SHARES[stage] * left / (0.5 * STEP_COST[stage]))
    # the estimate printed before training is the budget left (up to the rounding of steps)
    assert left * 0.99 < estimate_seconds(plan, 0.5) - FIXED_SECONDS <= left


def test_plan_respects_caps_and_the_floor():
    dc = DemoConfig.for_minutes(15)
    fast = plan_steps(dc, elapsed=0.0, step_s=1e-4)
    assert fast == {s: dc.max_steps[s] for s in STAGE_SHARES}          # a fast machine: every cap binds
    slow = plan_steps(dc, elapsed=10_000.0, step_s=5.0)
    assert set(slow.values()) == {dc.min_steps}                         # over budget already: the floor
    dc.minutes = None
    assert plan_steps(dc, 0.0, 100.0) == dc.max_steps                   # no budget: the caps as given


def test_replan_uses_pretrainings_real_rate_and_the_time_left():
    dc = DemoConfig.for_minutes(15)
    dc.max_steps = {s: 10**6 for s in dc.max_steps}
    plan = {"steps": plan_steps(dc, elapsed=0.0, step_s=0.4)}
    # pretraining really ran at half the timed cost per step, in 200 s: the later stages get twice the steps
    records = {"pretrain": {"seconds": plan["steps"]["pretrain"] * STEP_COST["pretrain"] * 0.2}}
    left = 15 * 60 - records["pretrain"]["seconds"] - FIXED_SECONDS
    later = {s: v for s, v in STAGE_SHARES.items() if s != "pretrain"}
    sft = replan_stage(dc, plan, records, "sft")
    assert sft == int(later["sft"] / sum(later.values()) * left / (0.2 * STEP_COST["sft"]))
    assert sft > 1.9 * plan["steps"]["sft"]
    # a stage that ran over its time leaves the ones after it less, shared among the stages still to run
    records["sft"] = {"seconds": left * 0.9}
    rest = {s: v for s, v in later.items() if s != "sft"}
    assert replan_stage(dc, plan, records, "math") == int(
        rest["math"] / sum(rest.values()) * (left * 0.1) / (0.2 * STEP_COST["math"]))
    records["sft"] = {"seconds": 10_000.0}
    assert replan_stage(dc, plan, records, "math") == dc.min_steps      # nothing left: the floor


def test_dial_grows_the_model_and_the_caps():
    assert preset_for(15) == preset_for(120) == "nano-1m" and preset_for(121) == "nano-10m"
    assert preset_for(480) == "nano-10m" and preset_for(481) == "nano-50m"
    d15, d60 = DemoConfig.for_minutes(15), DemoConfig.for_minutes(60)
    assert d60.model_preset() == "nano-1m" and DemoConfig.for_minutes(240).model_preset() == "nano-10m"
    assert all(d60.max_steps[s] == 4 * d15.max_steps[s] for s in d15.max_steps)
    with pytest.raises(ValueError, match="positive"):
        DemoConfig.for_minutes(0)


def test_set_field_checks_names_and_kinds():
    dc = DemoConfig()
    dc.set_field("max_steps.sft", 77)
    dc.set_field("minutes", 30)
    assert dc.max_steps["sft"] == 77 and dc.minutes == 30
    with pytest.raises(ValueError, match="no stage 'dpo'"):
        dc.set_field("max_steps.dpo", 5)
    with pytest.raises(ValueError, match="eval_items takes a whole number"):
        dc.set_field("eval_items", "many")
    with pytest.raises(ValueError, match="FIELD one of"):
        dc.set_field("pretrain_steps", 5)
