"""Hostile clients: hand-written bad bodies (fast) and a schemathesis fuzz of every endpoint from the
server's own OpenAPI schema (slow). The bar: no 5xx, every error in OpenAI's shape, the server alive
and exact after (a greedy request still equals the independent reference)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import torch
from serve_helpers import API_KEY, MODEL_NAME, LiveServer, close_engine, greedy_reference, make_engine

AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"]


@pytest.fixture(scope="module")
def fuzz_server(model, tokenizer):
    """A 64-token context (every request ends fast whatever max_tokens the fuzzer picks), 4 prompts, n <= 2."""
    from openqwen.serve.app import ServerConfig, create_app

    torch.set_num_threads(1)
    engine = make_engine(model, tokenizer, max_batch_size=4)
    live = LiveServer(create_app(engine, ServerConfig(model_name=MODEL_NAME, api_key=API_KEY, max_model_len=64,
                                                      max_prompts=4, max_n=2, max_body_bytes=2 * 1024 * 1024)))
    yield live
    live.close()
    close_engine(engine)


def still_exact(live, model, tokenizer):
    ids = tokenizer.encode("still alive?")
    r = httpx.post(live.url + "/v1/completions", headers=AUTH, timeout=60,
                   json={"model": MODEL_NAME, "prompt": ids, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200
    assert r.json()["choices"][0]["text"] == tokenizer.decode(greedy_reference(model, ids, 5, {tokenizer.eos_id}))


def hostile_bodies() -> list[bytes]:
    chat = '{"model": "tiny-qwen", "messages": [{"role": "user", "content": %s}]%s}'
    deep = "[" * 5000 + "]" * 5000
    return [
        b"", b"{", b"null", b"[]", b'"x"', b"{\"model\": ", b"\xff\xfe\x00garbage", b'{"model": "\xc3\x28"}',
        ('{"model": "tiny-qwen", "prompt": %s}' % deep).encode(),
        ('{"model": "tiny-qwen", "messages": %s}' % deep).encode(),
        (chat % ('"' + "x" * (1024 * 1024) + '"', ', "max_tokens": 1')).encode(),  # a 1 MB message: too long
        (chat % ('"hi"', ', "max_tokens": 1e308')).encode(),
        (chat % ('"hi"', ', "max_tokens": -5')).encode(),
        (chat % ('"hi"', ', "temperature": "hot"')).encode(),
        (chat % ('"hi"', ', "temperature": 1e-320, "max_tokens": 2')).encode(),
        (chat % ('"hi"', ', "repetition_penalty": 5e-324, "max_tokens": 2')).encode(),
        (chat % ('"hi"', ', "top_p": NaN')).encode(),
        (chat % ('"hi"', ', "seed": 184467440737095516160')).encode(),
        (chat % ('"hi"', ', "n": 99999999999')).encode(),
        (chat % ('"hi"', ', "stop": [' + ",".join(['"a"'] * 50) + "]")).encode(),
        (chat % ('{"nested": [1, 2]}', "")).encode(),
        (chat % ('"hi"', ', "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "string"}}}'
                 )).encode(),
        (chat % ('"hi"', ', "tools": [{"type": "function", "function": {"name": 7}}]')).encode(),
        b'{"model": "tiny-qwen", "prompt": [[1, 2], [999999999999]]}',
        b'{"model": "tiny-qwen", "prompt": [-1]}',
        b'{"model": "tiny-qwen", "prompt": "hi", "logprobs": 99}',
        b'{"model": "tiny-qwen", "prompt": "hi", "echo": true, "max_tokens": 0, "stream": true}',
        b'{"model": "tiny-qwen", "input": []}', b'{"model": "tiny-qwen", "input": [[]]}',
        b'{"tokens": [1e400]}', b'{"prompt": "a", "messages": []}',
    ]


@pytest.mark.slow  # ~45 s on a loaded 2-core machine (150 requests, a 1 MB message tokenised)
def test_hostile_bodies_get_4xx_in_openai_shape(fuzz_server, model, tokenizer):
    for body in hostile_bodies():
        for route in ROUTES:
            r = httpx.post(fuzz_server.url + route, content=body, headers=AUTH, timeout=60)
            assert r.status_code < 500, (route, body[:80], r.status_code, r.text[:300])
            if r.status_code >= 400:
                err = r.json()["error"]
                assert err["message"] and err["type"], (route, body[:80])
    still_exact(fuzz_server, model, tokenizer)


def test_streams_dropped_midway_leave_nothing_behind(fuzz_server, model, tokenizer):
    host, port = fuzz_server.url.removeprefix("http://").split(":")
    body = (b'{"model": "tiny-qwen", "prompt": "drop me", "max_tokens": 50, "ignore_eos": true, "stream": true}')
    for cut in (10, len(body) // 2, None):  # mid-body, mid-JSON, and after the first events
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            sock.sendall(head + (body if cut is None else body[:cut]))
            if cut is None:
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    engine = fuzz_server.app.state.server.engine
    deadline = time.monotonic() + 30
    while (engine.num_active or fuzz_server.app.state.server.admission.admitted) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.num_active == 0 and fuzz_server.app.state.server.admission.admitted == 0
    still_exact(fuzz_server, model, tokenizer)


@pytest.mark.slow
def test_schemathesis_fuzz_finds_no_5xx(fuzz_server, model, tokenizer):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, settings

    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    failures, calls = [], 0
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            nonlocal calls
            response = case.call(headers={"Authorization": AUTH["Authorization"]}, timeout=60)
            calls += 1
            if response.status_code >= 500:
                failures.append((operation.label, response.status_code, response.text[:300]))

        operation.as_strategy()  # resolves the schema of this operation now (errors surface here)
        from hypothesis import given

        given(operation.as_strategy())(run)()
    assert calls > 100 and not failures, failures[:5]
    still_exact(fuzz_server, model, tokenizer)
