"""Fixtures of the serving tests: the real Qwen tokenizer, a tiny random model, the engine, and a live
server with an API key (see serve_helpers.py)."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import API_KEY, MODEL_NAME, LiveServer, close_engine, make_engine, tiny_model


@pytest.fixture(scope="module")
def tokenizer():
    from openqwen.artifacts import artifact_path

    path = artifact_path("qwen-tiktoken")
    if path is None:
        pytest.skip("artifact 'qwen-tiktoken' not fetched (run ../shared/tools/fetch-artifacts)")
    from openqwen import QwenTokenizer

    return QwenTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def server(model, tokenizer):
    """A live server with an API key, batch up to 16."""
    from openqwen.serve.app import ServerConfig, create_app

    torch.set_num_threads(1)
    engine = make_engine(model, tokenizer)
    live = LiveServer(create_app(engine, ServerConfig(model_name=MODEL_NAME, api_key=API_KEY)))
    yield live
    live.close()
    close_engine(engine)


@pytest.fixture
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def template(artifact):
    """The real Qwen2.5 chat template (from the Qwen2.5-Coder GGUF's metadata)."""
    from openqwen.tokenizer.template import ChatTemplate

    return ChatTemplate.from_checkpoint(artifact("qwen25-coder-0.5b-instruct-gguf"))


@pytest.fixture(scope="module")
def qwen25_tokenizer():
    """Bytes as tokens plus the Qwen2.5 markers as special tokens: tool-call tests run a model with a
    263-row vocabulary instead of 152K (the real vocabulary's tool paths are tested in test_serve_tool_api)."""
    from openqwen import QwenTokenizer

    ranks = {bytes([b]): b for b in range(256)}
    ranks[b'": '] = 256
    ranks[b"get_"] = 257
    return QwenTokenizer(ranks, {"<|endoftext|>": 258, "<|im_start|>": 259, "<|im_end|>": 260,
                                 "<tool_call>": 261, "</tool_call>": 262})


@pytest.fixture(scope="module")
def qwen25_server(qwen25_tokenizer, template):
    """A tiny random model served with the real Qwen2.5 template (tools as <tool_call> JSON)."""
    from openqwen import Qwen, QwenConfig
    from openqwen.infer.engine import Engine
    from openqwen.serve.app import ServerConfig, create_app

    torch.set_num_threads(1)
    torch.manual_seed(1)
    config = QwenConfig(vocab_size=263, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, seq_length=2048)
    model = Qwen(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 2.0)
    engine = Engine(model, qwen25_tokenizer, max_batch_size=8, max_seq_len=2048)
    live = LiveServer(create_app(engine, ServerConfig(model_name=MODEL_NAME, api_key=API_KEY,
                                                      chat_template=template)))
    yield live
    live.close()
    close_engine(engine)


@pytest.fixture
def qwen25(qwen25_server):
    import openai

    return openai.OpenAI(base_url=qwen25_server.url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
