"""The OpenAI request -> engine request adapter alone (no server, no model): sampling parameters,
chat and completion prompt ids (history trimming included), logprob shaping and usage."""

from __future__ import annotations

import pytest

from openqwen.infer.sampling import SamplingParams
from openqwen.serve import protocol as P
from openqwen.serve.adapter import RequestAdapter, usage
from openqwen.serve.errors import APIError
from openqwen.serve.tool_requests import request_messages
from openqwen.tokenizer.chat import chat_prompt_ids

CONTEXT = 128


@pytest.fixture(scope="module")
def adapter(tokenizer):
    return RequestAdapter(tokenizer, CONTEXT, default_max_tokens=40)


def chat(**kw) -> P.ChatCompletionRequest:
    return P.ChatCompletionRequest(**{"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw})


def test_chat_sampling_params(adapter, tokenizer):
    job = adapter.chat_job(chat(n=3, seed=5, temperature=0.3, top_k=-1, stop="END", max_tokens=7,
                                logprobs=True))
    assert job.prompt_ids == tokenizer.apply_chat_template([{"role": "user", "content": "hi"}],
                                                           add_generation_prompt=True)
    assert [p.seed for p in job.params] == [5, 6, 7]  # n different samples, reproducibly
    p = job.params[0]
    assert (p.temperature, p.top_k, p.max_new_tokens, p.stop, p.logprobs) == (0.3, 0, 7, ["END"], True)
    assert p.stop_token_ids == list(tokenizer.stop_ids)
    defaults = SamplingParams.chat_defaults()  # what the request leaves unset comes from the release's chat defaults
    assert (p.top_p, p.repetition_penalty) == (defaults.top_p, defaults.repetition_penalty)


def test_completion_sampling_params_and_default_budget(adapter, tokenizer):
    req = P.CompletionRequest(model="m", prompt="x " * 100, ignore_eos=False)
    (job,) = adapter.completion_jobs(req)
    n = len(job.prompt_ids)
    assert n == len(tokenizer.encode("x " * 100)) and CONTEXT - n < 40
    (p,) = job.params
    assert p.max_new_tokens == CONTEXT - n  # the default budget is capped by what the prompt leaves
    assert p.stop_token_ids == [tokenizer.eos_id] and p.temperature == SamplingParams().temperature
    (short,) = adapter.completion_jobs(P.CompletionRequest(model="m", prompt="x"))
    assert short.params[0].max_new_tokens == 40
    assert adapter.completion_jobs(P.CompletionRequest(model="m", prompt="x", ignore_eos=True))[0].params[0] \
        .stop_token_ids == []


def test_completion_prompt_forms(adapter, tokenizer):
    ids = tokenizer.encode("Hello world")
    assert adapter.completion_prompts(P.CompletionRequest(model="m", prompt="Hello world")) == [ids]
    assert adapter.completion_prompts(P.CompletionRequest(model="m", prompt=["Hello world", "a"])) == \
        [ids, tokenizer.encode("a")]
    assert adapter.completion_prompts(P.CompletionRequest(model="m", prompt=ids)) == [ids]
    assert adapter.completion_prompts(P.CompletionRequest(model="m", prompt=[ids, [7]])) == [ids, [7]]
    with pytest.raises(APIError) as e:
        adapter.completion_prompts(P.CompletionRequest(model="m", prompt=[[1], [tokenizer.vocab_size]]))
    assert e.value.param == "prompt" and str(tokenizer.vocab_size) in e.value.message


def test_chat_history_is_trimmed_oldest_turn_first(adapter, tokenizer):
    turns = []
    for i in range(12):
        turns += [{"role": "user", "content": f"question number {i} about things"},
                  {"role": "assistant", "content": f"answer number {i} about other things"}]
    messages = [{"role": "system", "content": "Be brief."}] + turns + [{"role": "user", "content": "last one?"}]
    assert len(tokenizer.apply_chat_template(messages, add_generation_prompt=True)) > CONTEXT  # too long whole
    job = adapter.chat_job(chat(messages=messages, max_tokens=10))
    assert len(job.prompt_ids) <= CONTEXT - 10
    assert job.prompt_ids == chat_prompt_ids(tokenizer, messages, CONTEXT - 10)  # the one chat-prompt path
    # independently: the longest suffix of whole turns (system prompt kept) that fits with 10 tokens free
    fits = None
    for k in range(len(turns) // 2 + 1):
        kept = [messages[0]] + turns[2 * k:] + [messages[-1]]
        ids = tokenizer.apply_chat_template(kept, add_generation_prompt=True)
        if len(ids) <= CONTEXT - 10:
            fits = ids
            break
    assert fits is not None and job.prompt_ids == fits
    assert job.params[0].max_new_tokens == 10


def test_chat_over_context_names_the_parameter(adapter):
    with pytest.raises(APIError) as e:  # the last message alone does not fit: nothing to trim
        adapter.chat_job(chat(messages=[{"role": "user", "content": "word " * 300}]))
    assert (e.value.status, e.value.param, e.value.code) == (400, "messages", "context_length_exceeded")
    assert f"maximum context length is {CONTEXT} tokens" in e.value.message
    with pytest.raises(APIError) as e:  # it fits, but not with the completion asked for
        adapter.chat_job(chat(max_tokens=CONTEXT))
    assert (e.value.param, e.value.code) == ("max_tokens", "context_length_exceeded")


def test_chat_message_checks(adapter):
    m = request_messages(chat(messages=[{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                          {"type": "text", "text": "b"}]}]))
    assert m == [{"role": "system", "content": "ab"}]
    for messages, param in [([{"role": "tool", "content": "x"}], "messages.0.tool_call_id"),
                            ([{"role": "robot", "content": "x"}], "messages.0.role"),
                            ([{"role": "user", "content": [{"type": "image_url"}]}], "messages.0.content")]:
        with pytest.raises(APIError) as e:
            request_messages(chat(messages=messages))
        assert e.value.param == param
    with pytest.raises(APIError) as e:  # alternatives need the chosen tokens' log-probs asked for too
        adapter.sampling_params(chat(top_logprobs=2), True, 3, None)
    assert e.value.param == "top_logprobs"
    (params,) = adapter.sampling_params(chat(top_logprobs=2, logprobs=True), True, 3, None)
    assert params.logprobs and params.top_logprobs == 2


def test_logprob_shaping(adapter, tokenizer):
    ids = tokenizer.encode("Hi there") + [tokenizer.im_end_id]
    lps = [-0.5, -1.0, -2.0][: len(ids) - 1] + [-0.1]
    body = ids[:-1]
    lp = adapter.chat_logprobs(ids, lps, "stop")  # the final stop token is not in the text: not in logprobs
    assert [t.logprob for t in lp.content] == lps[:-1]
    assert b"".join(bytes(t.bytes) for t in lp.content) == b"Hi there"
    assert len(adapter.chat_logprobs(ids, lps, "length").content) == len(ids)  # not a stop: kept
    assert adapter.chat_logprobs(ids, None, "stop") is None
    c = adapter.completion_logprobs(body, lps[:-1], "length", offset=5)
    pieces = [tokenizer.id_to_bytes(t).decode() for t in body]
    assert c.tokens == pieces and "".join(pieces) == "Hi there"
    assert c.text_offset == [5 + len("".join(pieces[:i])) for i in range(len(pieces))]


def test_usage():
    assert usage(7, 5).model_dump() == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
