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
