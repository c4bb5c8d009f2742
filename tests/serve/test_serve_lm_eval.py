"""EleutherAI's lm-eval as a real client of the server: an MMLU subset through ``local-completions``
(log-likelihoods from echo + logprobs, tokens from /tokenize) and a generation task through
``local-chat-completions``, compared question by question with openqwen's own evaluation on the engine."""

from __future__ import annotations

import json

import pytest
import torch
from serve_helpers import MODEL_NAME, LiveServer, close_engine, make_engine

from openqwen.eval.tasks.multiple_choice import LETTERS, base_prompt_parts, evaluate_mc, load_mc, select
from openqwen.infer.sampling import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keyless(model, tokenizer):
    from openqwen.serve.app import ServerConfig, create_app

    torch.set_num_threads(1)
    engine = make_engine(model, tokenizer, max_batch_size=4)
    live = LiveServer(create_app(engine, ServerConfig(model_name=MODEL_NAME)))
    live.engine = engine
    yield live
    live.close()
    close_engine(engine)


def short_mmlu(artifact, tokenizer, n=12, budget=300):
    items, _ = load_mc(artifact("mmlu-test"))
    out = []
    for it in select(items, per_subject=2):  # a few subjects, questions that fit the tiny model's 384 positions
        shared, question = base_prompt_parts(it, [], False)
        if len(tokenizer.encode(shared + question)) < budget:
            out.append(it)
        if len(out) == n:
            break
    return out


def run_lm_eval(tmp_path, name, task_yaml, rows, model, model_args, **kw):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / f"{name}.yaml").write_text(task_yaml.format(name=name, data=data))
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[name], log_samples=True,
                                   task_manager=TaskManager(include_path=str(tmp_path)), **kw)


MC_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
"""


def test_lm_eval_mmlu_through_echo_and_logprobs(keyless, artifact, tokenizer, tmp_path):
    items = short_mmlu(artifact, tokenizer)
    ours = evaluate_mc(keyless.engine, items, shots=0)
    rows = [{"prompt": "".join(base_prompt_parts(it, [], False)), "gold": LETTERS.index(it.answer)} for it in items]
    out = run_lm_eval(tmp_path, "tiny_mmlu", MC_TASK, rows, "local-completions",
                      {"model": MODEL_NAME, "base_url": keyless.url + "/v1/completions", "tokenizer_backend": "remote",
                       "num_concurrent": 1, "max_retries": 1})
    samples = sorted(out["samples"]["tiny_mmlu"], key=lambda s: s["doc_id"])
    assert len(samples) == len(items)
    for s, d in zip(samples, ours["details"]):
        theirs = [r[0] for r in s["filtered_resps"]]  # (log-likelihood, is_greedy) per choice
        assert theirs == pytest.approx(d["letter_logprobs"], abs=2e-3)
        assert LETTERS[max(range(4), key=lambda k: theirs[k])] == d["prediction"]
    assert out["results"]["tiny_mmlu"]["acc,none"] == pytest.approx(ours["metrics"]["accuracy"])


GEN_TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 8
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


def test_lm_eval_generation_through_chat_completions(keyless, tmp_path):
    rows = [{"question": q, "answer": a} for q, a in [("What is 2 + 3?", "5"), ("Name a colour.", "red"),
                                                        ("Say hello.", "hello"), ("Capital of France?", "Paris")]]
    out = run_lm_eval(tmp_path, "tiny_gen", GEN_TASK, rows, "local-chat-completions",
                      {"model": MODEL_NAME, "base_url": keyless.url + "/v1/chat/completions", "num_concurrent": 1,
                       "max_retries": 1}, apply_chat_template=True)
    samples = sorted(out["samples"]["tiny_gen"], key=lambda s: s["doc_id"])
    # the engine directly, with the server's chat sampling (the release's chat defaults, greedy)
    params = SamplingParams.chat_defaults(temperature=0, max_new_tokens=8, stop=["\n\n"])
    ref = keyless.engine.chat([[{"role": "user", "content": r["question"]}] for r in rows], params)
    assert [s["resps"][0][0] for s in samples] == [c.text for c in ref]
    exact = sum(c.text.strip() == r["answer"] for c, r in zip(ref, rows)) / len(rows)
    assert out["results"]["tiny_gen"]["exact_match,none"] == pytest.approx(exact)
