"""`openqwen eval` end to end on a tiny random model: every task family writes a JSON result with
metrics, counts and settings, plus the markdown table; bad input exits 2 with a message."""

from __future__ import annotations

import json
import math

import pytest
import torch

from openqwen import Qwen, QwenConfig, QwenTokenizer, save_model
from openqwen.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from openqwen.artifacts import artifact_path

    tok_path = artifact_path("qwen-tiktoken")
    if tok_path is None:
        pytest.skip("artifact 'qwen-tiktoken' not fetched")
    d = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    save_model(Qwen(QwenConfig(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=2, tie_word_embeddings=True, seq_length=256,
                               max_position_embeddings=2048)), d)
    QwenTokenizer.from_pretrained(tok_path).save_pretrained(d)
    return d


def run(tmp_path, *argv) -> dict:
    out = tmp_path / "r.json"
    assert main(["eval", *argv, "--output", str(out), "--threads", "1", "--no-progress"]) == 0
    res = json.loads(out.read_text())
    md = out.with_suffix(".md").read_text()
    assert md.startswith("| model | task |") and res["task"] in md
    assert not (tmp_path / "r.json.partial.jsonl").exists()
    for key in ("task", "mode", "shots", "metrics", "counts", "settings", "wall_time_s", "details"):
        assert key in res
    return res


def test_mmlu_base(tmp_path, tiny_dir, artifact):
    from openqwen import load_model
    from openqwen.eval.tasks import multiple_choice as mc

    path = artifact("mmlu-test")
    res = run(tmp_path, "--model", str(tiny_dir), "--task", "mmlu", "--limit", "6", "--shots", "1")
    assert res["shots"] == 1 and res["counts"]["total"] == 6 and res["counts"]["dropped_header_rows"] == 2
    # the reference: the same six questions read from the file, scored by plain full forwards
    items, _ = mc.load_mc(path)
    examples, rest = mc.split_shots(items, 1)
    model, tok = load_model(tiny_dir).eval(), QwenTokenizer.from_pretrained(tiny_dir)
    letters = mc.letter_token_ids(tok, leading_space=True)
    preds = []
    for it in rest[:6]:
        shared, question = mc.base_prompt_parts(it, examples[it.subject], False)
        with torch.no_grad():
            logits = model(torch.tensor([tok.encode(shared) + tok.encode(question)]))[0, -1, letters]
        preds.append(mc.LETTERS[int(logits.argmax())])
    assert [d["id"] for d in res["details"]] == [it.id for it in rest[:6]]
    assert [d["prediction"] for d in res["details"]] == preds
    correct = sum(p == it.answer for p, it in zip(preds, rest[:6]))
    assert res["counts"]["correct"] == correct and res["metrics"]["accuracy"] == pytest.approx(correct / 6)


def test_perplexity(tmp_path, tiny_dir):
    text = tmp_path / "t.txt"
    text.write_text("To be, or not to be, that is the question. " * 40)
    res = run(tmp_path, "--model", str(tiny_dir), "--task", "perplexity", "--data", str(text),
              "--context-lengths", "16", "64", "--max-windows", "3")
    assert set(res["breakdown"]) == {"16", "64"}
    assert res["breakdown"]["64"]["tokens"] == 3 * 63
    # the reference: exp of the mean cross-entropy of plain full forwards over the same windows
    from openqwen import load_model

    model, tok = load_model(tiny_dir).eval(), QwenTokenizer.from_pretrained(tiny_dir)
    ids = tok.encode(text.read_text()) + [tok.eos_id]
    for L in (16, 64):
        with torch.no_grad():
            losses = [torch.nn.functional.cross_entropy(model(torch.tensor([w]))[0, :-1], torch.tensor(w[1:]),
                                                        reduction="sum").item()
                      for w in (ids[i * L : (i + 1) * L] for i in range(3))]
        want = math.exp(sum(losses) / (3 * (L - 1)))
        assert res["metrics"][f"perplexity@{L}"] == pytest.approx(want, rel=1e-5)


def test_generation_tasks_through_the_engine(tmp_path, tiny_dir, artifact):
    artifact("humaneval")
    res = run(tmp_path, "--model", str(tiny_dir), "--task", "humaneval", "--limit", "2", "--max-new-tokens", "6")
    assert res["metrics"] == {"pass@1": 0.0}  # random weights cannot solve anything
    assert res["counts"]["total"] == 2 and res["sandbox"]["memory"] == "RLIMIT_AS"
    assert all(d["result"] in ("failed", "timeout") for d in res["details"])
    res = run(tmp_path, "--model", str(tiny_dir), "--task", "math401", "--mode", "chat", "--limit", "3",
              "--max-new-tokens", "4")
    # random weights answer no arithmetic, and over 151,936 tokens greedy decoding hits no stop id
    # within 4 tokens: every problem generates exactly max_new_tokens
    assert res["counts"] == {"total": 3, "correct": 0, "generated_tokens": 3 * 4}
    assert [d["correct"] for d in res["details"]] == [False] * 3


def test_bad_input_exits_2(tmp_path, tiny_dir, capsys):
    assert main(["eval", "--model", str(tiny_dir), "--task", "gsm8k", "--no-progress"]) == 2
    assert "needs --data" in capsys.readouterr().err
    assert main(["eval", "--model", str(tiny_dir), "--task", "mmlu", "--data", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_resume_reuses_saved_completions(tmp_path, tiny_dir, artifact):
    from openqwen.eval.tasks.code import load_humaneval

    first = load_humaneval(artifact("humaneval"))[0]
    n_prompt = len(QwenTokenizer.from_pretrained(tiny_dir).encode(first.prompt))
    saved = {"index": 0, "prompt_tokens": n_prompt, "text": first.canonical_solution, "finish_reason": "stop",
             "completion_tokens": 7}
    (tmp_path / "r.json.partial.jsonl").write_text(json.dumps(saved) + "\n" + '{"index": 1, "te')  # cut line
    res = run(tmp_path, "--model", str(tiny_dir), "--task", "humaneval", "--limit", "2", "--max-new-tokens", "5",
              "--resume")
    assert res["details"][0]["completion"] == first.canonical_solution and res["details"][0]["passed"] == 1
    assert res["metrics"]["pass@1"] == 0.5  # the saved right answer; the tiny model fails the other
    assert res["counts"]["generated_tokens"] == 7 + 5  # the saved 7, and 5 new for the other problem
