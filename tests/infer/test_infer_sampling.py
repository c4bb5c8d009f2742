"""Sampling semantics against transformers' own logits processors (the release's semantics)."""

from __future__ import annotations

import pytest
import torch

from openqwen.infer.sampling import SamplingParams, apply_repetition_penalty, filter_logits, sample_token

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


def hf_pipeline(logits, prev_ids, penalty, temperature, top_k, top_p):
    ids = torch.tensor([prev_ids])
    x = logits[None].clone()
    if penalty != 1.0:
        x = RepetitionPenaltyLogitsProcessor(penalty)(ids, x)
    if temperature != 1.0:
        x = TemperatureLogitsWarper(temperature)(ids, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(ids, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(ids, x)
    return x[0]


@pytest.mark.parametrize("V", [50, 4000])
@pytest.mark.parametrize("penalty,temperature,top_k,top_p", [
    (1.1, 1.0, 0, 0.8),  # the release's chat defaults
    (1.3, 0.7, 20, 1.0),
    (1.0, 1.5, 0, 0.95),
    (2.0, 0.5, 10, 0.5),
    (1.0, 1.0, 0, 0.999),  # nucleus larger than the 256-token probe: full-sort path
])
def test_processing_equals_transformers(V, penalty, temperature, top_k, top_p):
    g = torch.Generator().manual_seed(V)
    for trial in range(5):
        logits = torch.randn(V, generator=g) * (1 + 3 * trial)
        prev = torch.randint(0, V, (30,), generator=g).tolist()
        seen = torch.zeros(V, dtype=torch.bool)
        seen[prev] = True
        ours = filter_logits(apply_repetition_penalty(logits, seen, penalty), temperature, top_k, top_p)
        ref = hf_pipeline(logits, prev, penalty, temperature, top_k, top_p)
        assert torch.equal(torch.isinf(ours), torch.isinf(ref))
        # ours shifts the largest logit to 0 before dividing by the temperature (no NaN at tiny
        # temperatures): the same distribution, so compare log-probabilities
        finite = ~torch.isinf(ref)
        torch.testing.assert_close(torch.log_softmax(ours, -1)[finite], torch.log_softmax(ref, -1)[finite])


def test_repetition_penalty_signs():
    logits = torch.tensor([2.0, -2.0, 2.0, -2.0])
    seen = torch.tensor([True, True, False, False])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [1.0, -4.0, 2.0, -2.0]


def test_sampling_follows_the_distribution_and_the_seed():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2, 0.0 + 1e-9]))
    p = SamplingParams(temperature=1.0)
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.tensor([sample_token(logits, p, None, g) for _ in range(4000)]), minlength=4)
    torch.testing.assert_close(counts.float() / 4000, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.03, rtol=0)
    # top_p 0.6 keeps the two most likely tokens only
    p = SamplingParams(top_p=0.6)
    draws = {sample_token(logits, p, None, torch.Generator().manual_seed(s)) for s in range(200)}
    assert draws == {0, 1}
    # temperature 0 and greedy=True are argmax
    assert sample_token(logits, SamplingParams(temperature=0), None, None) == 0
    assert sample_token(logits, SamplingParams(greedy=True, temperature=5), None, None) == 0


def test_chat_defaults_are_the_releases():
    p = SamplingParams.chat_defaults(seed=3)
    assert (p.top_p, p.top_k, p.repetition_penalty, p.max_new_tokens, p.seed) == (0.8, 0, 1.1, 512, 3)


def test_draw_index_follows_the_distribution_and_never_draws_a_removed_token():
    from openqwen.infer.sampling import draw_index

    torch.manual_seed(0)
    probs = torch.rand(3000) ** 4  # spans three blocks and a padded tail, with zeros as top-k leaves them
    probs[::7] = 0.0
    probs[2500:] = 0.0
    probs[1500] = 40.0  # one heavy token (totals need not be 1)
    gen = torch.Generator().manual_seed(1)
    draws = torch.tensor([draw_index(probs, gen) for _ in range(30000)])
    counts = torch.bincount(draws, minlength=3000).double()
    assert int(counts[probs == 0].sum()) == 0
    expected = probs.double() / probs.double().sum() * len(draws)
    # every token within 5 standard deviations of its binomial count, and the heavy one close
    sigma = (expected * (1 - expected / len(draws))).sqrt()
    assert bool(((counts - expected).abs() <= 5 * sigma + 1).all())
    assert abs(counts[1500] - expected[1500]) / expected[1500] < 0.03
    # the same seed draws the same sequence
    again = torch.Generator().manual_seed(1)
    assert [draw_index(probs, again) for _ in range(200)] == draws[:200].tolist()
