"""The OpenAI surface that tools use, through the official SDK against a live server, checked against
the tiny model computed another way (full forward passes, no cache, no batching): echo and prompt
log-probs, top alternatives, seeds, response_format, tokenize/detokenize and embeddings."""

from __future__ import annotations

import base64
import json

import httpx
import jsonschema
import numpy as np
import openai
import pytest
import torch
from serve_helpers import API_KEY, MODEL_NAME, greedy_reference

HELLO = [{"role": "user", "content": "Hello! Who are you?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@torch.no_grad()
def full_logprobs(model, ids):
    return torch.log_softmax(model(torch.tensor([list(ids)]))[0].float(), -1)


def test_echo_with_logprobs_is_what_lm_eval_reads(client, model, tokenizer):
    text = "The capital of France is Paris"
    ids = tokenizer.encode(text)
    r = client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=2, temperature=0, logprobs=2, echo=True)
    (choice,) = r.choices
    gen = greedy_reference(model, ids, 2, {tokenizer.eos_id})
    logp = full_logprobs(model, ids + gen)
    lp = choice.logprobs
    assert choice.text == text + tokenizer.decode(gen)
    assert lp.tokens == [tokenizer.id_to_bytes(t).decode("utf-8", errors="replace") for t in ids + gen]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing precedes the first token
    want = [float(logp[i - 1, t]) for i, t in enumerate(ids + gen) if i > 0]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-3)
    for i in range(1, len(ids) + len(gen)):  # two alternatives at every position, prompt and completion
        top = torch.topk(logp[i - 1], 2)
        names = [tokenizer.id_to_bytes(t).decode("utf-8", errors="replace") for t in top.indices.tolist()]
        assert list(lp.top_logprobs[i]) == names
        assert list(lp.top_logprobs[i].values()) == pytest.approx(top.values.tolist(), abs=1e-3)
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 2
    # lm-eval's own reading: greedy iff the token's log-prob equals the best alternative's, at every position
    gen_positions = range(len(ids), len(ids) + len(gen))
    assert all(lp.token_logprobs[i] == max(lp.top_logprobs[i].values()) for i in gen_positions)


def test_echo_alone_and_prompt_lists(client, model, tokenizer):
    prompts = [tokenizer.encode("one two three"), tokenizer.encode("a")]
    r = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=0, logprobs=0, echo=True)
    assert [c.text for c in r.choices] == [tokenizer.decode(p) for p in prompts]
    assert all(c.finish_reason == "length" for c in r.choices) and r.usage.completion_tokens == 0
    logp = full_logprobs(model, prompts[0])
    assert r.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        [float(logp[i - 1, t]) for i, t in enumerate(prompts[0]) if i > 0], abs=1e-3)
    assert r.choices[1].logprobs.token_logprobs == [None]  # a one-token prompt has nothing to score
    with pytest.raises(openai.BadRequestError) as e:  # max_tokens 0 is only for echo
        client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=0)
    assert e.value.body["param"] == "max_tokens"


def test_echo_streamed_starts_with_the_prompt(client, tokenizer):
    ids = tokenizer.encode("Stream me")
    full = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=4, temperature=0, logprobs=1, echo=True)
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=4, temperature=0, logprobs=1,
                                            echo=True, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert streamed == full.choices[0].logprobs.token_logprobs


def test_chat_top_logprobs_match_the_model(client, model, tokenizer):
    r = client.chat.completions.create(model=MODEL_NAME, messages=HELLO, temperature=0, max_tokens=4, logprobs=True,
                                       top_logprobs=3, extra_body={"repetition_penalty": 1.0})
    prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True)
    gen = greedy_reference(model, prompt, 4, set(tokenizer.stop_ids))
    logp = full_logprobs(model, prompt + gen)
    for t, entry in enumerate(r.choices[0].logprobs.content):
        top = torch.topk(logp[len(prompt) - 1 + t], 3)
        assert [bytes(a.bytes) for a in entry.top_logprobs] == [tokenizer.id_to_bytes(i) for i in top.indices.tolist()]
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)  # greedy: the chosen one is the top


def test_seed_gives_the_same_sample(client):
    def sample(seed, stream=False):
        kw = dict(model=MODEL_NAME, prompt="Tell me", max_tokens=12, temperature=1.0, seed=seed)
        if stream:
            return "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
        return client.completions.create(**kw).choices[0].text

    a = sample(1234)
    assert sample(1234) == a and sample(1234, stream=True) == a
    assert len({sample(s) for s in (1, 2, 3)} | {a}) > 1  # a different seed draws differently


def test_seed_overflow_is_a_clean_400_before_streaming(server):
    for stream in (False, True):  # the fuzz defect: 200 headers, then a dropped connection
        body = {"model": MODEL_NAME, "messages": HELLO, "max_tokens": 2, "seed": 2**64, "stream": stream}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["param"] == "seed"


def test_tiny_temperature_is_greedy_over_http(client, model, tokenizer):
    ids = tokenizer.encode("Hi there")
    ref = tokenizer.decode(greedy_reference(model, ids, 6, {tokenizer.eos_id}))
    for t in (1e-300, 5e-324):  # the fuzz defect: NaN probabilities, HTTP 500, the whole batch failed
        r = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=6, temperature=t)
        assert r.choices[0].text == ref


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 6},
                                                    "maxItems": 3},
                                           "ok": {"type": "boolean"}},
          "required": ["name", "age", "ok"]}


def test_response_format_json_schema_validates(client):
    for seed in (0,):
        r = client.chat.completions.create(
            model=MODEL_NAME, messages=HELLO, max_tokens=120, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)


def test_response_format_json_object_parses(client):
    r = client.chat.completions.create(model=MODEL_NAME, messages=HELLO, max_tokens=60, seed=5, temperature=0.2,
                                       response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":  # a random model may run out of tokens inside a long key
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    assert r.choices[0].message.content.startswith("{")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=HELLO, response_format={"type": "yaml"})
    assert e.value.body["param"] == "response_format.type"


def test_tokenize_detokenize(server, tokenizer):
    text = "Hello world<|endoftext|> ünï"
    r = httpx.post(server.url + "/tokenize", json={"prompt": text}, headers=AUTH).json()
    assert r["tokens"] == tokenizer.encode(text, allowed_special="all") and r["count"] == len(r["tokens"])
    plain = httpx.post(server.url + "/tokenize", json={"prompt": text, "special_tokens": False}, headers=AUTH).json()
    assert plain["tokens"] == tokenizer.encode(text)  # what /v1/completions does with a text prompt
    chat = httpx.post(server.url + "/tokenize", json={"messages": HELLO}, headers=AUTH).json()
    assert chat["tokens"] == tokenizer.apply_chat_template(HELLO, add_generation_prompt=True)
    back = httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}, headers=AUTH).json()
    assert back["prompt"] == text
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [-1]}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    info = httpx.get(server.url + "/tokenizer_info", headers=AUTH).json()
    assert info["eos_token"] == "<|endoftext|>"


@torch.no_grad()
def test_embeddings_mean_and_last_pooling(client, model, tokenizer):
    texts = ["a cat sat on the mat", "hi"]
    states = []
    hook = model.norm.register_forward_hook(lambda m, i, o: states.append(o[0].float()))
    try:
        refs = []
        for t in texts:  # one full forward per text; the final norm's output is the last hidden state
            states.clear()
            model(torch.tensor([tokenizer.encode(t)]))
            refs.append(states[0])
    finally:
        hook.remove()
    r = client.embeddings.create(model=MODEL_NAME, input=texts)
    got = torch.tensor([d.embedding for d in r.data])
    want = torch.stack([h.mean(0) / h.mean(0).norm() for h in refs])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert r.usage.prompt_tokens == sum(len(tokenizer.encode(t)) for t in texts)
    last = client.embeddings.create(model=MODEL_NAME, input=texts, extra_body={"pooling": "last"})
    want = torch.stack([h[-1] / h[-1].norm() for h in refs])
    torch.testing.assert_close(torch.tensor([d.embedding for d in last.data]), want, atol=1e-4, rtol=1e-4)
    b64 = client.embeddings.create(model=MODEL_NAME, input=texts[0], encoding_format="base64")  # little-endian f32
    raw = torch.tensor(np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4").copy())
    torch.testing.assert_close(raw, got[0], atol=1e-6, rtol=1e-6)
