"""The nano PPO proof (docs/alignment.md, "PPO nano proof"), slow: the benchmark's variants run once
(a module fixture, `benchmarks/bench_ppo.py` in a subprocess, exactly as the docs' numbers were made)
and each of the issue's claims is its own test with the issue's threshold. Claims the measured runs
do not meet are xfail with the measured numbers, not loosened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "runs" / "alignproof"  # benchmarks/proof_ppo_models.py builds sft/, reward/, base/packed
VARIANTS = ("kl0.04+ptx", "kl0+ptx", "kl0.04-no-ptx")
SETTINGS: list[str] = []  # the recipe ppo-nano.yaml as it is (docs: the same command)
STEPS = 160


@pytest.fixture(scope="module")
def proof(tmp_path_factory) -> dict:
    needed = [MODELS / "sft" / "config.json", MODELS / "reward" / "config.json", MODELS / "base" / "packed"]
    if not all(p.exists() for p in needed):
        pytest.skip("needs the proof's models: run `python benchmarks/proof_ppo_models.py` first")
    out = tmp_path_factory.mktemp("ppo-proof")
    # one process per variant, one thread each (as the measured runs: two threads per process ran 5x
    # slower on a shared 2-core machine); each writes OUT/results-VARIANT.json with its own "before"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bench_ppo.py"), "--sft", str(MODELS / "sft"),
                               "--reward", str(MODELS / "reward"), "--ptx", str(MODELS / "base" / "packed"),
                               "--out", str(out), "--steps", str(STEPS), "--threads", "1", "--variants", v,
                               "--set", "train.threads=1", *SETTINGS], cwd=ROOT) for v in VARIANTS]
    assert [p.wait() for p in procs] == [0] * len(procs)
    results = {v: json.loads((out / f"results-{v}.json").read_text()) for v in VARIANTS}
    return {"before": results[VARIANTS[0]]["before"], **{v: results[v][v] for v in VARIANTS}}


@pytest.mark.slow
@pytest.mark.xfail(reason="measured (docs/alignment.md): reward-model reward -0.30 +- 1.34 -> 0.08, +0.28 std of the "
                          "initial reward, not 1; a policy LR of 3e-4 gives +1.3-1.5 std, by over-optimisation",
                   strict=False)
def test_heldout_reward_rises_by_one_std_of_the_initial_reward(proof):
    before, after = proof["before"], proof["kl0.04+ptx"]["after"]
    assert after["reward_mean"] - before["reward_mean"] >= before["reward_std"]


@pytest.mark.slow
@pytest.mark.xfail(reason="measured (docs/alignment.md): sampled held-out accuracy 0.145 -> 0.110; the reward model "
                          "ranks the policy's right answers above its wrong ones for the same question only 53 % of "
                          "the time (near misses at chance), so PPO has nothing that checks the number to climb",
                   strict=False)
def test_heldout_task_accuracy_rises(proof):
    assert proof["kl0.04+ptx"]["after"]["accuracy"] > proof["before"]["accuracy"]


@pytest.mark.slow
def test_kl_penalty_keeps_the_policy_closer_than_no_penalty(proof):
    kl = {v: proof[v]["after"]["kl_per_token"] for v in ("kl0.04+ptx", "kl0+ptx")}
    assert kl["kl0.04+ptx"] < kl["kl0+ptx"]


@pytest.mark.slow
def test_ptx_term_limits_the_rise_of_the_heldout_pretraining_loss(proof):
    rise = {v: proof[v]["after"]["heldout_pretrain_loss"] - proof["before"]["heldout_pretrain_loss"]
            for v in ("kl0.04+ptx", "kl0.04-no-ptx")}
    assert rise["kl0.04+ptx"] < rise["kl0.04-no-ptx"]
