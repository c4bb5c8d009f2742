"""Multiple-choice scoring from next-token log-probabilities: a model that always answers A scores
exactly the share of A answers (base k-shot and chat 0-shot), and the letters' log-probabilities
(through Engine.score, shared prefixes reused) equal plain full forwards."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from openqwen import Qwen, QwenConfig, QwenTokenizer
from openqwen.eval.tasks import multiple_choice as mc
from openqwen.infer.engine import Engine


@pytest.fixture(scope="module")
def tokenizer():
    from openqwen.artifacts import artifact_path

    path = artifact_path("qwen-tiktoken")
    if path is None:
        pytest.skip("artifact 'qwen-tiktoken' not fetched")
    return QwenTokenizer.from_pretrained(path)


def tiny_model(vocab: int = 151936, seed: int = 0) -> Qwen:
    torch.manual_seed(seed)
    return Qwen(QwenConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, seq_length=512,
                           max_position_embeddings=4096)).eval()


def scorer(model: Qwen, tokenizer) -> Engine:
    return Engine(model, tokenizer, max_batch_size=1, background=False)


def always(model: Qwen, token_id: int) -> Qwen:
    """Give the output head a bias that makes ``token_id`` win at every position."""
    head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[token_id] = 1e4
    model.lm_head = head
    return model


def write_questions(path, answers: str, subjects=("algebra", "history")):
    with open(path, "w") as f:
        f.write(json.dumps({"question": "question", "answer_a": "answer_a", "answer_b": "answer_b",
                            "answer_c": "answer_c", "answer_d": "answer_d", "correct_answer": "answer",
                            "topic": "algebra"}) + "\n")  # a junk header row, as in the artifact
        for i, a in enumerate(answers):
            f.write(json.dumps({"question": f"Question number {i}: what is {i} + {i}?",
                                "answer_a": str(2 * i), "answer_b": str(2 * i + 1), "answer_c": str(i),
                                "answer_d": "none", "correct_answer": a,
                                "topic": subjects[i % len(subjects)]}) + "\n")


@pytest.mark.parametrize("mode,shots", [("base", 2), ("chat", 0)])
def test_always_a_scores_the_share_of_a(tmp_path, tokenizer, mode, shots):
    answers = "ABCDAABDCAACBDDA"
    write_questions(tmp_path / "q.jsonl", answers)
    items, junk = mc.load_mc(tmp_path / "q.jsonl")
    assert junk == 1 and len(items) == len(answers)
    examples, rest = mc.split_shots(items, shots)
    letter = mc.letter_token_ids(tokenizer, leading_space=(mode == "base"))[0]
    model = always(tiny_model(), letter)
    res = mc.evaluate_mc(scorer(model, tokenizer), rest, shots, mode, batch_size=3, examples=examples)
    share_a = sum(it.answer == "A" for it in rest) / len(rest)
    assert res["metrics"]["accuracy"] == pytest.approx(share_a)
    assert res["counts"]["total"] == len(rest) == len(answers) - 2 * shots
    assert all(d["prediction"] == "A" for d in res["details"])


def test_always_a_on_the_mmlu_artifact(artifact, tokenizer):
    items, junk = mc.load_mc(artifact("mmlu-test"))
    assert (len(items), junk) == (14042, 2)
    examples, rest = mc.split_shots(items, 1)
    subset = mc.select(rest, per_subject=1)
    assert len(subset) == 57
    model = always(tiny_model(), mc.letter_token_ids(tokenizer, True)[0])
    res = mc.evaluate_mc(scorer(model, tokenizer), subset, 1, "base", batch_size=8, examples=examples)
    assert res["metrics"]["accuracy"] == pytest.approx(sum(it.answer == "A" for it in subset) / 57)
    assert res["counts"]["subjects"] == 57


class _Vocab300:
    vocab_size = 300


def test_letter_logprobs_match_full_forwards():
    model = tiny_model(vocab=300, seed=1)
    g = torch.Generator().manual_seed(0)
    shared = torch.randint(0, 300, (23,), generator=g).tolist()
    prompts = [shared + torch.randint(0, 300, (n,), generator=g).tolist() for n in (1, 5, 9, 2, 7)]
    cands = [3, 17, 42, 299]
    got = mc.letter_logprobs(scorer(model, _Vocab300()), prompts, cands, batch_size=2)
    with torch.no_grad():
        want = torch.stack([torch.log_softmax(model(torch.tensor([p]))[0, -1], -1)[cands] for p in prompts])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_bad_rows_say_what_to_fix(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer_a": "1", "answer_b": "2",
                                                    "answer_c": "3", "answer_d": "4", "correct_answer": "E"}) + "\n")
    with pytest.raises(mc.TaskDataError, match="bad.jsonl:1: correct answer 'E'"):
        mc.load_mc(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text(json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(mc.TaskDataError, match="expected keys question"):
        mc.load_mc(tmp_path / "bad2.jsonl")


def test_ceval_csv_shape(tmp_path, tokenizer):
    (tmp_path / "computer_network_val.csv").write_text(
        "id,question,A,B,C,D,answer,explanation\n0,下列哪个是协议？,TCP,苹果,香蕉,桌子,A,\n1,一加一等于几？,3,2,4,5,B,\n")
    items, junk = mc.load_mc(tmp_path)
    assert [it.answer for it in items] == ["A", "B"] and items[0].subject == "computer network"
    assert mc.is_chinese(items)
    prompt = mc.base_prompt_parts(items[1], items[:1], True)
    assert prompt[0].startswith("以下是中国关于computer network考试的单项选择题") and prompt[1].endswith("答案：")
