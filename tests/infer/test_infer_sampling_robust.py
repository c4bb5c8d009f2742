"""Regression tests of the fuzzing defects: sampling that cannot produce NaN, a failing request that
ends alone, top-N log-probabilities and echo scoring against the model computed another way."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, tiny_model

from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams, sample_token

PROMPTS = ["Hello", "The quick brown fox", "12+7=", "abc"]


@pytest.fixture(scope="module")
def engine():
    eng = Engine(tiny_model(), ByteTokenizer(), max_batch_size=4, max_seq_len=96)
    yield eng
    eng.close()


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40, 1e-30])
def test_tiny_temperature_is_argmax_not_nan(temperature):
    torch.manual_seed(0)
    logits = torch.randn(1000) * 5
    params = SamplingParams(temperature=temperature)
    for seed in range(5):  # the limit of sampling as T -> 0: the argmax, always
        assert sample_token(logits, params, None, torch.Generator().manual_seed(seed)) == int(logits.argmax())


def test_tiny_repetition_penalty_samples_among_seen_tokens():
    torch.manual_seed(1)
    logits = torch.randn(1000).abs() + 0.1  # all positive: a tiny penalty divides them up to +inf
    seen = torch.zeros(1000, dtype=torch.bool)
    seen[[3, 17, 512]] = True
    params = SamplingParams(repetition_penalty=1e-300, temperature=0.7)
    picks = {sample_token(logits, params, seen, torch.Generator().manual_seed(s)) for s in range(20)}
    assert picks <= {3, 17, 512} and len(picks) > 1  # boosted to the top (tied), never NaN


def test_extreme_requests_keep_their_batch_mates_exact(engine):
    greedy = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    solo = [engine.generate(p, greedy)[0].token_ids for p in PROMPTS[:2]]
    hostile = [SamplingParams(max_new_tokens=16, temperature=t, ignore_eos=True) for t in (1e-300, 5e-324)]
    hostile.append(SamplingParams(max_new_tokens=16, repetition_penalty=1e-300, ignore_eos=True, seed=3))
    out = engine.generate(PROMPTS[:2] + PROMPTS[2:3] * 3, [greedy, greedy] + hostile)
    assert [c.token_ids for c in out[:2]] == solo
    # a temperature of 1e-300 samples the argmax: the greedy tokens of its prompt
    assert out[2].token_ids == engine.generate(PROMPTS[2], greedy)[0].token_ids
    assert len(out[4].token_ids) == 16


def test_a_failing_request_ends_alone():
    """A request whose own logits hook raises mid-way ends with an error; its batch-mates, in the same
    decode steps, finish with exactly their solo tokens."""
    eng = Engine(tiny_model(), ByteTokenizer(), max_batch_size=4, max_seq_len=96, background=False)
    greedy = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    solo = [eng.generate(p, greedy)[0].token_ids for p in PROMPTS[:3]]

    def breaks_at_step_5():
        def process(generated, logits):
            if len(generated) == 5:
                raise RuntimeError("constraint exploded")
            return logits
        return process

    handles = [eng.submit(p, greedy) for p in PROMPTS[:2]]
    bad = eng.submit(PROMPTS[3], greedy.replace(constraint=breaks_at_step_5))
    handles.append(eng.submit(PROMPTS[2], greedy))
    with pytest.raises(RuntimeError, match="constraint exploded"):
        bad.result()
    assert [h.result().token_ids for h in handles] == solo
    assert eng.num_active == 0


@torch.no_grad()
def test_top_logprobs_match_the_model(engine):
    params = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=3)
    (c,) = engine.generate(PROMPTS[1], params)
    ids = engine.tokenizer.encode(PROMPTS[1])
    logp = torch.log_softmax(engine.model(torch.tensor([ids + c.token_ids]))[0].float(), -1)
    for t, (token, top) in enumerate(zip(c.token_ids, c.top_logprobs)):
        ref = torch.topk(logp[len(ids) - 1 + t], 3)
        assert [i for i, _ in top] == ref.indices.tolist() and top[0][0] == token  # greedy: the top one
        assert [v for _, v in top] == pytest.approx(ref.values.tolist(), abs=1e-4)
    with pytest.raises(ValueError, match="top_logprobs needs logprobs"):
        SamplingParams(top_logprobs=2)


@torch.no_grad()
def test_scoring_top_n_matches_the_model(engine):
    ids = engine.tokenizer.encode("Once upon a time")
    (r,) = engine.score([ids[:1]], [ids[1:]], top_n=2)
    logp = torch.log_softmax(engine.model(torch.tensor([ids]))[0].float(), -1)
    assert r.token_logprobs == pytest.approx([float(logp[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-4)
    assert [[i for i, _ in top] for top in r.top_logprobs] == [torch.topk(logp[i], 2).indices.tolist()
                                                               for i in range(len(ids) - 1)]


def test_seed_outside_64_bits_is_refused_up_front():
    for seed in (2**64, -(2**63) - 1):
        with pytest.raises(ValueError, match="seed must be an integer in"):
            SamplingParams(seed=seed)
    SamplingParams(seed=2**64 - 1)
    SamplingParams(seed=-(2**63))
