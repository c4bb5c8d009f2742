"""``openqwen eval --api``: the same tasks through an OpenAI-compatible server (openqwen's own, live on
a loopback port) give exactly the in-process results on the same model (greedy decoding)."""

from __future__ import annotations

import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen.eval.harness import EvalConfig, run_eval


@pytest.fixture(scope="module")
def tiny(artifact):
    from openqwen import QwenTokenizer

    tok = QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))
    torch.manual_seed(0)
    model = Qwen(QwenConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                            max_position_embeddings=1024, seq_length=1024)).eval()
    with torch.no_grad():  # wide logit margins: greedy picks never flip on batching round-off
        model.lm_head.weight.normal_(0.0, 1.0)
    return model, tok, str(artifact("qwen-tiktoken"))


@pytest.fixture(scope="module")
def server(tiny):
    from openqwen.infer.engine import Engine
    from openqwen.serve.app import BackgroundServer, ServerConfig, create_app

    model, tok, _ = tiny
    engine = Engine(model, tok, max_batch_size=4, max_seq_len=1024)
    live = BackgroundServer(create_app(engine, ServerConfig(model_name="tiny", api_key="k")))
    yield live
    live.close()
    engine.close()


@pytest.mark.parametrize("task,mode,limit", [("synthetic-math", "chat", 4),
                                             pytest.param("mbpp", "base", 3, marks=pytest.mark.slow)])
def test_api_run_equals_in_process(tiny, server, task, mode, limit):
    model, tok, tok_path = tiny
    common = dict(task=task, mode=mode, limit=limit, max_new_tokens=10, batch_size=3, progress=False,
                  data="builtin" if task == "mbpp" else None)
    local = run_eval(EvalConfig(model="tiny", **common), model, tok)
    remote = run_eval(EvalConfig(model="tiny", tokenizer=tok_path, api_url=server.url + "/v1", api_key="k", **common))
    key = "reply" if task == "synthetic-math" else "completion"
    assert [d[key] for d in remote["details"]] == [d[key] for d in local["details"]]
    assert any(d[key] for d in local["details"])  # the random model writes something to compare
    assert remote["metrics"] == local["metrics"] and remote["settings"]["system_prompt"] == local["settings"]["system_prompt"]


def test_api_refuses_scoring_tasks_and_a_dead_server(tiny):
    _, _, tok_path = tiny
    with pytest.raises(ValueError, match="--api runs the generation tasks"):
        run_eval(EvalConfig(model="tiny", task="mmlu", tokenizer=tok_path, api_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="cannot reach the server"):
        run_eval(EvalConfig(model="tiny", task="synthetic-math", mode="chat", limit=1, tokenizer=tok_path,
                            api_url="http://127.0.0.1:9/v1", progress=False))
