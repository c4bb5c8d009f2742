"""The ring-buffer and int8 KV caches through the engine, against references the engine does not use.

Continuous batching on ring buffers: rows of different lengths decode together, a finished row's slot is
taken by a new request (its ring still holds the old request's keys, which the slot positions must hide),
and a chat's next turn continues its own ring row beside a fresh request. Every generated token's
log-probability is held to (a) the model decoding that sequence alone on a dense cache that keeps every
position (windows by the mask only) and (b) a full forward over the text, and the ring buffers stay at
sinks + window slots. The int8 cache is held to the fp32 full forward within a stated tolerance.
(tests/test_kv_cache.py tests the cache itself; tests/infer/test_infer_kv_int8.py the fused step on int8.)
"""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, tiny_model

from openqwen.infer import kernels
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams

WINDOWS, SINKS = [5, None, 7], 2
PROMPTS = [list(range(30, 33)), list(range(60, 74)), list(range(90, 99)), list(range(100, 122))]
NEW_TOKENS = [6, 25, 12, 8]  # uneven, so with 2 rows at a time requests 3 and 4 take finished rows' slots
INT8_TOLERANCE = 0.03
"""Largest |log p(int8 cache) - log p(fp32 full forward)| allowed per generated token: per head, per token
int8 rounding of keys and values (half a step of max|x|/127) moves this tiny model's log-probabilities by
0.004-0.018 per sequence (measured, torch and fused alike); 0.03 leaves room and still fails a cache read
with wrong scales or a lost window (errors 0.5-2)."""


def windowed(seed: int, **kw):
    return tiny_model(seed=seed, layers=3, seq_length=8, max_position_embeddings=128, window_sizes=WINDOWS,
                      attention_sinks=SINKS, **kw).eval()


def fused_or_skip(fused: bool) -> None:
    if fused and kernels.load_kernels() is None:
        pytest.skip(kernels.kernel_status())


def full_forward_logprobs(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """log p of each generated token under one forward over prompt + generated (no cache at all)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + generated]))[0, len(prompt) - 1 : -1, :259].float()
    return torch.log_softmax(logits, -1)[torch.arange(len(generated)), torch.tensor(generated)]


def dense_cache_logprobs(model, prompt: list[int], generated: list[int]) -> torch.Tensor:
    """log p of each generated token, the sequence decoded alone on a dense cache (every position kept)."""
    cache = model.new_cache(1, len(prompt) + len(generated), ring=False)
    assert not cache.has_rings
    out = []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), cache=cache)[0, -1, :259]
        for t in generated:
            out.append(torch.log_softmax(logits.float(), -1)[t])
            logits = model(torch.tensor([[t]]), cache=cache)[0, -1, :259]
    return torch.stack(out)


def run(engine: Engine, prompts: list[list[int]], new_tokens: list[int]):
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True, logprobs=True) for n in new_tokens]
    return engine.generate(prompts, params)


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
def test_continuous_batching_on_rings_equals_a_dense_cache_and_the_full_forward(fused):
    fused_or_skip(fused)
    model = windowed(seed=11)
    engine = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=64, fused=fused, background=False)
    done = run(engine, PROMPTS, NEW_TOKENS)
    assert ("fused C" in engine.fused_status) == fused, engine.fused_status
    cache = engine._runner.cache
    assert [k.shape[2] for k in cache.keys] == [SINKS + 5, 64, SINKS + 7]  # rings stay at sinks + window
    for p, c, n in zip(PROMPTS, done, NEW_TOKENS):
        assert len(c.token_ids) == n
        got = torch.tensor(c.logprobs)
        torch.testing.assert_close(got, dense_cache_logprobs(model, p, c.token_ids), atol=1e-4, rtol=0)
        torch.testing.assert_close(got, full_forward_logprobs(model, p, c.token_ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
def test_a_next_turn_continues_its_ring_row_beside_a_fresh_request(fused):
    """Turn one of a chat (40 tokens: past the prefix-reuse threshold and every window) and another
    request run together; then turn two (turn one + its answer + 3 tokens) and a fresh prompt run
    together: turn two continues its row from its end, and both equal the references."""
    fused_or_skip(fused)
    model = windowed(seed=12)
    engine = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=96, fused=fused, background=False)
    turn1, other = list(range(40, 80)), list(range(5, 23))
    first = run(engine, [turn1, other], [7, 11])
    turn2 = turn1 + first[0].token_ids + [5, 6, 7]
    fresh = list(range(120, 131))
    second = run(engine, [turn2, fresh], [9, 14])
    assert engine.reused_tokens == len(turn1) + 7 - 1  # all the row holds (its last token was never fed)
    for p, c in ((turn1, first[0]), (other, first[1]), (turn2, second[0]), (fresh, second[1])):
        got = torch.tensor(c.logprobs)
        torch.testing.assert_close(got, dense_cache_logprobs(model, p, c.token_ids), atol=1e-4, rtol=0)
        torch.testing.assert_close(got, full_forward_logprobs(model, p, c.token_ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("windows", [None, WINDOWS], ids=["full", "rings"])
@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
def test_engine_on_an_int8_cache_stays_within_the_tolerance_of_fp32(fused, windows):
    """The same continuous batching on an int8 cache: each chosen token's log-probability against the
    fp32 model's full forward over the same text (a float reference that never rounds)."""
    fused_or_skip(fused)
    model = windowed(seed=13).eval()
    model.config = model.config.replace(window_sizes=windows, attention_sinks=SINKS if windows else 0)
    reference = windowed(seed=13)
    reference.config = model.config
    model.config = model.config.replace(kv_cache_dtype="int8")
    engine = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=64, fused=fused, background=False)
    done = run(engine, PROMPTS, NEW_TOKENS)
    assert ("fused C" in engine.fused_status) == fused, engine.fused_status
    assert engine._runner.cache.keys[0].dtype == torch.int8
    worst = 0.0
    for p, c in zip(PROMPTS, done):
        err = (torch.tensor(c.logprobs) - full_forward_logprobs(reference, p, c.token_ids)).abs().max()
        worst = max(worst, float(err))
    assert 0 < worst < INT8_TOLERANCE, worst  # rounding shows (not silently fp32) and stays small
