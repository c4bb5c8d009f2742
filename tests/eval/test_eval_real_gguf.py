"""The real model through openqwen: Qwen2.5-Coder-0.5B-Instruct (q4_k_m GGUF) on the first 3
HumanEval problems (greedy, chat) and 20 MMLU questions (0-shot chat). Slow: loading and generating
with a 0.5B model on CPU takes minutes."""

from __future__ import annotations

import json

import pytest
import torch

from openqwen.eval.harness import EvalConfig, load_model_and_tokenizer, run_eval, write_result

# minutes of CPU on a 2-core machine; allow for a busy one
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_coder_humaneval_and_mmlu_small(artifact, tmp_path):
    gguf = artifact("qwen25-coder-0.5b-instruct-gguf")
    artifact("humaneval")
    artifact("mmlu-test")
    torch.set_num_threads(2)
    model, tok = load_model_and_tokenizer(str(gguf), "fp32")

    he = run_eval(EvalConfig(model=str(gguf), task="humaneval", mode="chat", limit=3, batch_size=3, max_new_tokens=320,
                             progress=False), model, tok)
    js, md = write_result(he, tmp_path / "he.json")
    he = json.loads(js.read_text())
    assert he["counts"]["total"] == 3 and he["shots"] == 0 and he["mode"] == "chat"
    assert set(he["metrics"]) == {"pass@1"}
    # the first HumanEval problems are easy; the full run and the 8-problem run with EvalPlus' prompt
    # (docs/results.md) solved HumanEval/0 and /2 of these 3 (greedy fp32 decoding is deterministic),
    # each reply ending by itself well inside the 320-token budget
    assert [d["passed"] for d in he["details"]] == [1, 0, 1]
    assert he["metrics"]["pass@1"] == pytest.approx(2 / 3)
    assert [he["details"][i]["finish_reason"] for i in (0, 2)] == ["stop", "stop"]
    assert "pass@1 (%)" in md.read_text()

    mm = run_eval(EvalConfig(model=str(gguf), task="mmlu", mode="chat", per_subject=1, limit=20, batch_size=10,
                             progress=False), model, tok)
    js, _ = write_result(mm, tmp_path / "mmlu.json")
    mm = json.loads(js.read_text())
    assert mm["counts"]["total"] == 20 and mm["shots"] == 0
    # the reference: the same 20 chat prompts, letters read from plain full forwards of the model
    from openqwen.eval.tasks import multiple_choice as mc

    items, _ = mc.load_mc(artifact("mmlu-test"))
    subset = mc.select(mc.split_shots(items, 0)[1], 20, 1)
    letters = mc.letter_token_ids(tok, leading_space=False)
    want = []
    for it in subset:
        # the harness puts the model's own default system prompt first (its GGUF chat template's)
        ids = tok.apply_chat_template(mc.chat_messages(it, [], False, QWEN25_SYSTEM), add_generation_prompt=True)
        with torch.no_grad():
            want.append(mc.LETTERS[int(model(torch.tensor([ids]))[0, -1, letters].argmax())])
    assert [d["prediction"] for d in mm["details"]] == want
    assert len(set(want)) > 1  # a working model does not answer one letter to everything
    assert mm["settings"]["system_prompt"] == QWEN25_SYSTEM
    assert mm["counts"]["correct"] == sum(p == it.answer for p, it in zip(want, subset))
