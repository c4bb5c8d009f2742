"""The main job at its quick size, every stage end to end: each model loads, each metric is computed
(from the saved replies, recomputed here), a second run resumes without training again, and
``openqwen chat`` and ``openqwen serve`` give every model's own greedy reply."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quick_demo_runs_every_stage_and_resumes(tmp_path):
    from openqwen import QwenTokenizer, load_model
    from openqwen.data.synthetic_instructions import instructions
    from openqwen.demo import DemoConfig, run
    from openqwen.demo.scores import MODEL_METRICS
    from openqwen.eval.tasks.math import extract_answer
    from openqwen.train.sft_data import heldout_arithmetic

    dc = DemoConfig.make_quick()
    dc.threads = 1
    records = run(tmp_path, dc)
    assert records["held-out check"]["overlap"] == {k: 0 for k in records["held-out check"]["overlap"]}
    for name in MODEL_METRICS:
        folder = tmp_path / ("pretrain" if name == "base" else name)
        model = load_model(folder)
        assert QwenTokenizer.from_pretrained(folder).vocab_size <= model.config.vocab_size
        ev = records[f"eval:{name}"]
        assert set(ev["metrics"]) == set(MODEL_METRICS[name]), name
        if "instructions" in ev["metrics"]:  # recomputed from the replies: the answers, exactly
            items = instructions("heldout", dc.eval_items, distinct=True)
            rows = ev["samples"]["instructions"]
            assert [q for q, _, _ in rows] == [i.question for i in items]
            right = sum(r.strip().rstrip(".").lower() == i.answer.lower() for (_, r, _), i in zip(rows, items))
            assert ev["metrics"]["instructions"] == right / len(items)
        if "arithmetic" in ev["metrics"]:
            rows = ev["samples"]["arithmetic"]
            truth = dict(heldout_arithmetic(dc.eval_items))
            assert ev["metrics"]["arithmetic"] == sum(extract_answer(r) == truth[q] for q, r, _ in rows) / len(rows)
    # every training stage ran its planned steps and learnt: its validation loss (a fixed set) fell where
    # it measures one, else its last training losses are below the first. code-continue's training
    # losses cannot tell: two 512-token rows a step swing by +-0.3 (5.09 at step 1, 5.56 at step 10 on an
    # AVX2 EPYC while its validation loss fell from 4.95 to 4.84)
    for stage in ("pretrain", "sft", "code-continue", "math"):
        rows = [json.loads(line) for line in (tmp_path / stage / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows if r.get("kind") == "train"]
        val = [r["val_loss"] for r in rows if r.get("kind") == "val"]
        assert len(losses) == dc.max_steps[stage], stage
        assert (val[-1] < val[0]) if len(val) >= 2 else (min(losses[-3:]) < losses[0]), (stage, losses, val)
    assert records["reward"]["heldout_accuracy"] is not None
    curves = records["long-context"]["curves"]
    assert set(curves) == {"plain RoPE", "dynamic NTK + LogN", "NTK + LogN + windows"}
    # at the training length the three variants are the same function (bit-exact no-ops up to S)
    first = {c[str(dc.seq_len)] if str(dc.seq_len) in c else c[dc.seq_len] for c in curves.values()}
    assert max(first) - min(first) < 1e-3 * max(first)
    report = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    for name in MODEL_METRICS:
        assert f"openqwen chat --model {tmp_path / ('pretrain' if name == 'base' else name)}" in report
    assert "## Goals" in report and "<h2>Goals</h2>" in html
    assert (tmp_path / "loss_curves.png").stat().st_size > 5000 and (tmp_path / "long_context.png").exists()
    # a second run finds every stage recorded: nothing trains, the same report comes out
    before = {s: (tmp_path / s / "metrics.jsonl").read_text() for s in ("pretrain", "sft")}
    again = run(tmp_path, dc)
    assert again == records
    assert {s: (tmp_path / s / "metrics.jsonl").read_text() for s in ("pretrain", "sft")} == before
    assert (tmp_path / "report.md").read_text() == report
    # `openqwen chat` and `openqwen serve` (the commands the report prints) answer on every model it made,
    # with the engine's own greedy reply to the same question
    _chat_and_serve_answer_on_every_model(tmp_path)


def _chat_and_serve_answer_on_every_model(out: Path) -> None:
    import httpx

    from benchmarks.bench_serve_load import start_openqwen, stop
    from openqwen.demo.scores import MODEL_METRICS
    from openqwen.infer.engine import Engine
    from openqwen.infer.sampling import SamplingParams

    question = "What is 12 + 7?"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for name in MODEL_METRICS:
        folder = out / ("pretrain" if name == "base" else name)
        engine = Engine.from_pretrained(folder, max_batch_size=1, max_seq_len=512)
        try:
            # `chat` and the server sample with the release's chat defaults (repetition penalty 1.1)
            (expected,) = [o.text for o in engine.chat([[{"role": "user", "content": question}]],
                                                       SamplingParams.chat_defaults(greedy=True, max_new_tokens=8))]
        finally:
            engine.close()
        chat = subprocess.run([sys.executable, "-m", "openqwen.cli", "chat", "--model", str(folder), "--greedy",
                               "--max-new-tokens", "8", "--threads", "1"], input=question + "\n",
                              capture_output=True, text=True, timeout=300, env=env)
        assert chat.returncode == 0, (name, chat.stderr)
        # (a quick base model may answer only spaces, which the terminal shows as nothing to find)
        assert expected.strip() in chat.stdout, (name, expected, chat.stdout)
        proc, url = start_openqwen(folder, 2, 4, 1, 512)
        try:
            r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
                "model": folder.name, "messages": [{"role": "user", "content": question}], "temperature": 0,
                "max_tokens": 8})
            assert r.status_code == 200, (name, r.text)
            reply = r.json()["choices"][0]["message"]["content"]
            assert r.json()["model"] == folder.name and isinstance(reply, str), (name, r.json())
            assert reply == expected, (name, reply, expected)
        finally:
            assert stop(proc) == 0, name
