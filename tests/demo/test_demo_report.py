"""The demo report's accounting: gains against the parent model, goals met or not, totals, escaping."""

from __future__ import annotations

from pathlib import Path

from openqwen.demo.report import goal_rows, model_table, write_report


def _evals(**metrics):
    return {name: {"metrics": m, "samples": {}} for name, m in metrics.items()}


EVALS = _evals(base={"arithmetic": 0.01, "pass@1": 0.10},
               sft={"instructions": 0.62, "arithmetic": 0.20, "ppo_task": 0.30, "ppo_reward": -0.1, "math": 0.05},
               ppo={"instructions": 0.60, "arithmetic": 0.22, "ppo_task": 0.33, "ppo_reward": 0.4},
               **{"code-continue": {"pass@1": 0.15}, "code-sft": {"instructions": 0.5, "arithmetic": 0.1,
                                                                   "pass@1": 0.12}},
               math={"instructions": 0.55, "arithmetic": 0.51, "math": 0.40},
               agent={"instructions": 0.5, "arithmetic": 0.2, "tool_selection": 0.8, "tool_false_pos": 0.25,
                      "agent_answers": 0.6})
EVALS["sft"]["metrics"].update(tool_selection=0.1, tool_false_pos=0.0, agent_answers=0.0)


def test_table_shows_each_metric_and_the_gain_over_the_parent():
    header, rows = model_table(EVALS)
    assert header[:2] == ["model", "starts from"]
    by_model = {r[0]: dict(zip(header, r)) for r in rows}
    assert by_model["sft"]["starts from"] == "base"
    assert by_model["sft"]["arithmetic"] == "20.0% (+19.0)"          # 0.20 - 0.01, in points
    assert by_model["math"]["math"] == "40.0% (+35.0)"               # against sft's 0.05
    assert by_model["code-sft"]["code pass@1"] == "12.0% (-3.0)"     # a loss is shown, not hidden
    assert by_model["base"]["instructions"] == "-"                   # not measured on a base model
    assert by_model["ppo"]["RM reward"] == "+0.400"                  # a reward, not a percentage


def test_goals_are_judged_from_the_numbers():
    curves = {"plain RoPE": {128: 10.0, 512: 80.0}, "dynamic NTK + LogN": {128: 10.0, 512: 30.0}}
    rows = {g: (measured, met) for g, measured, met in goal_rows(EVALS, {"heldout_accuracy": 0.93}, curves)}
    assert rows["held-out instruction accuracy after SFT >= 50 %"] == ("62.0%", True)
    assert rows["held-out arithmetic after the math stage >= 50 %"] == ("51.0%", True)
    assert rows["PPO >= +5 points over SFT on its reward-checked task (preferred replies)"] == ("30.0% -> 33.0%", False)  # +3 points
    assert rows["code-continue better than base on code pass@1"][1] is True
    assert rows["code-sft better than code-continue on code pass@1"][1] is False
    assert rows["reward model better than chance on held-out pairs"] == ("93.0%", True)
    assert rows["agent better than sft on tool selection"] == ("10.0% -> 80.0%", True)
    # lower is better for false positives: a rise from 0 % is a goal missed, whatever selection did
    assert rows["agent calls no more tools than sft where none is needed (false positives)"] == ("0.0% -> 25.0%", False)
    assert rows["NTK + LogN below plain RoPE at 512 tokens (4x training)"] == ("80.0 -> 30.0", True)
    missing = {g: met for g, _, met in goal_rows(_evals(base={"arithmetic": 0.0}), None, None)}
    assert missing["held-out instruction accuracy after SFT >= 50 %"] is None  # not run is not "met"


def test_report_files_total_and_escaping(tmp_path: Path):
    records = {"corpus": {"seconds": 30.0, "info": "10 documents"},
               "pretrain": {"seconds": 90.5, "info": "a | b"},
               **{f"eval:{k}": {**v, "seconds": 0.0, "info": ""} for k, v in EVALS.items()}}
    records["eval:sft"]["samples"] = {"chat": [("<script>x</script>", "4 | 5")]}
    md, page = write_report(tmp_path, records, quick=False, plots=["loss_curves.png"])
    text, html = md.read_text(), page.read_text()
    assert "| total | 120 | 2.0 minutes |" in text                      # 30 + 90.5 (+ 0 for the evals)
    assert "a \\| b" in text and "4 \\| 5" in text                      # cells cannot break the table
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert "![loss_curves.png](loss_curves.png)" in text and "<img src='loss_curves.png'" in html
    assert f"openqwen chat --model {tmp_path / 'math'}" in text and f"{tmp_path / 'pretrain'}" in text
    assert (tmp_path / "demo.json").exists()
