"""Limits and operations of a live server: body size, the API key before the body, the bounded queue,
the deadline, caps, /metrics, /health, access logs and CORS, each answered in OpenAI's error shape."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import API_KEY, CONTEXT, MODEL_NAME, LiveServer, close_engine, make_engine

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def limited(model, tokenizer):
    """One slot, no queue, 4 KiB bodies, a 1.5 s deadline (0.1 s in the deadline test), 2 prompts and n <= 2 per request, CORS for ORIGIN."""
    from openqwen.serve.app import ServerConfig, create_app

    torch.set_num_threads(1)
    engine = make_engine(model, tokenizer, max_batch_size=1)
    cfg = ServerConfig(model_name=MODEL_NAME, api_key=API_KEY, max_body_bytes=4096, max_queue=0, request_timeout=1.5,
                       max_prompts=2, max_n=2, cors_origins=(ORIGIN,), access_log=True)
    app = create_app(engine, cfg)
    live = LiveServer(app)
    live.state = app.state.server
    yield live
    live.close()
    close_engine(engine)


def post(live, path, body=None, headers=AUTH, **kw):
    return httpx.post(live.url + path, json=body, headers=headers, timeout=60, **kw)


def metric(live, name, **labels):
    text = httpx.get(live.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def metric_values(live) -> dict[str, float]:
    """The unlabelled samples of one scrape (the gauges read together)."""
    text = httpx.get(live.url + "/metrics").text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_body_too_large_is_413_declared_or_chunked(limited):
    big = {"model": MODEL_NAME, "prompt": "x" * 5000, "max_tokens": 1}
    r = post(limited, "/v1/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    chunks = (b'{"model": "tiny-qwen", "prompt": "' + b"y" * 1000 for _ in range(6))  # no Content-Length
    r = httpx.post(limited.url + "/v1/completions", content=chunks, headers=AUTH, timeout=60)
    assert r.status_code == 413


def test_api_key_is_checked_before_the_body(limited):
    r = httpx.post(limited.url + "/v1/completions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # not a 400 about the JSON
    r = httpx.post(limited.url + "/v1/completions", content=b"z" * 10_000)  # nor a 413: nothing was read
    assert r.status_code == 401
    assert post(limited, "/tokenize", {"prompt": "hi"}, headers={}).status_code == 401


def test_caps_on_prompts_and_n(limited):
    r = post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": ["a", "b", "c"], "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    r = post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": "a", "n": 3, "max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n"
    r = post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": "a", "max_tokens": 10_000})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_full_queue_is_429_with_retry_after_then_recovers(limited):
    body = {"model": MODEL_NAME, "prompt": "hold the slot", "max_tokens": 200, "ignore_eos": True, "stream": True}
    rejected_before = metric(limited, "openqwen_requests_total", route="/v1/completions", status="429")
    with httpx.stream("POST", limited.url + "/v1/completions", json=body, headers=AUTH, timeout=60) as held:
        lines = held.iter_lines()
        assert next(lines).startswith("data: ")  # generating: the one slot is taken, the queue holds 0
        r = post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": "me too", "max_tokens": 1})
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        health = httpx.get(limited.url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "full"
    assert metric(limited, "openqwen_requests_total", route="/v1/completions", status="429") == rejected_before + 1
    deadline = time.monotonic() + 30
    while limited.state.admission.admitted and time.monotonic() < deadline:  # the dropped stream gives back
        time.sleep(0.05)
    assert post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": "me too", "max_tokens": 1}).status_code == 200
    assert httpx.get(limited.url + "/health").json()["status"] == "ok"


def test_deadline_stops_a_long_request(limited, monkeypatch):
    # 370 tokens of this tiny model take well over 0.1 s on any laptop (the engine's loop alone costs
    # more than 0.3 ms a token), so this deadline is always passed
    monkeypatch.setattr(limited.state, "config", dataclasses.replace(limited.state.config, request_timeout=0.1))
    body = {"model": MODEL_NAME, "prompt": "go on", "max_tokens": 370, "ignore_eos": True}
    start = time.monotonic()
    r = post(limited, "/v1/completions", body)
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - start < 10
    raw = httpx.post(limited.url + "/v1/completions", json={**body, "stream": True}, headers=AUTH, timeout=60).text
    assert '"deadline_exceeded"' in raw  # in-band for a stream: its 200 was sent already
    deadline = time.monotonic() + 30
    while limited.state.engine.num_active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert limited.state.engine.num_active == 0  # the engine stopped them, not just the HTTP side


def test_metrics_count_tokens_and_requests(limited):
    before = metric(limited, "openqwen_generation_tokens_total")
    ok_before = metric(limited, "openqwen_requests_total", route="/v1/completions", status="200")
    r = post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": "count me", "max_tokens": 7,
                                          "ignore_eos": True}).json()
    assert metric(limited, "openqwen_generation_tokens_total") - before == r["usage"]["completion_tokens"] == 7
    assert metric(limited, "openqwen_requests_total", route="/v1/completions", status="200") == ok_before + 1
    assert metric(limited, "openqwen_time_to_first_token_seconds_count") >= 1
    assert metric(limited, "openqwen_inter_token_latency_seconds_count") >= 6  # 7 tokens, 6 gaps
    assert metric(limited, "openqwen_running_slots") == 0 and metric(limited, "openqwen_queue_length") == 0
    httpx.get(limited.url + "/no/such/page/" + "x" * 50)  # an unknown path does not become a label
    assert metric(limited, "openqwen_requests_total", route="other", status="404") >= 1


def test_gauges_see_a_running_request(server, tokenizer):
    """running_slots and kv_cache_usage_ratio of one scrape while a stream holds a slot (the default
    server: 16 slots x CONTEXT positions, no deadline), then both back to 0."""
    body = {"model": MODEL_NAME, "prompt": "hold the slot", "max_tokens": 200, "ignore_eos": True, "stream": True}
    prompt_len = len(tokenizer.encode("hold the slot"))
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=60) as held:
        lines = held.iter_lines()  # kept: a dropped generator closes the response (a disconnect)
        assert next(lines).startswith("data: ")  # the first token is out: the request holds a slot
        scrape = metric_values(server)
        assert scrape["openqwen_running_slots"] == 1 and scrape["openqwen_queue_length"] == 0
        held_positions = scrape["openqwen_kv_cache_usage_ratio"] * 16 * CONTEXT
        assert prompt_len < held_positions <= prompt_len + 200 + 1e-6  # the prompt and the tokens so far
    deadline = time.monotonic() + 30
    while metric(server, "openqwen_running_slots") and time.monotonic() < deadline:  # the dropped stream frees it
        time.sleep(0.05)
    scrape = metric_values(server)
    assert scrape["openqwen_running_slots"] == 0 and scrape["openqwen_kv_cache_usage_ratio"] == 0


def test_access_log_is_one_json_line_per_request(limited, caplog):
    with caplog.at_level(logging.INFO, logger="openqwen.serve.access"):
        r = post(limited, "/v1/chat/completions", {"model": MODEL_NAME, "max_tokens": 3, "ignore_eos": True,
                                                   "messages": [{"role": "user", "content": "log me"}]}).json()
        time.sleep(0.2)
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "openqwen.serve.access"]
    (line,) = [x for x in lines if x["id"] == r["id"]]
    assert line["status"] == 200 and line["path"] == "/v1/chat/completions"
    assert line["prompt_tokens"] == r["usage"]["prompt_tokens"] and line["completion_tokens"] == 3
    assert 0 < line["ttft_s"] <= line["seconds"]


def test_cors_for_the_configured_origin_only(limited, server):
    pre = httpx.options(limited.url + "/v1/chat/completions",
                        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                 "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(limited.url + "/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    off = httpx.get(server.url + "/health", headers={"Origin": ORIGIN})  # the default server: CORS off
    assert "access-control-allow-origin" not in off.headers


def test_draining_answers_503_but_health_and_metrics(limited):
    limited.state.draining = True
    try:
        r = post(limited, "/v1/completions", {"model": MODEL_NAME, "prompt": "late", "max_tokens": 1})
        assert r.status_code == 503 and r.json()["error"]["code"] == "draining" and "Retry-After" in r.headers
        h = httpx.get(limited.url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "draining"
        assert httpx.get(limited.url + "/metrics").status_code == 200
    finally:
        limited.state.draining = False
