"""Engine.score against plain full forwards: log_softmax(model(prompt + continuation)) at the
continuation's positions, for single and batched rows, shared prefixes, repeated prompts with
continuations of different lengths, prefixes reused across calls, and while the engine generates."""

from __future__ import annotations

import threading

import pytest
import torch
from infer_helpers import ByteTokenizer, tiny_model

from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)


def reference(model, prompt, cont):
    """Per-token log-probabilities and argmax hits from one full forward without a cache."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt + cont]))[0].float(), -1)
    rows = lp[len(prompt) - 1 : len(prompt) - 1 + len(cont)]
    return rows[torch.arange(len(cont)), torch.tensor(cont)].tolist(), (rows.argmax(-1) == torch.tensor(cont)).tolist()


def rand_ids(g, n):
    return torch.randint(0, 259, (n,), generator=g).tolist()


def check(model, prompts, conts, results):
    assert len(results) == len(prompts)
    for p, c, r in zip(prompts, conts, results):
        want, hits = reference(model, p, c)
        assert r.num_tokens == len(c) == len(r.token_logprobs)
        # fp32 rounding: the engine's steps (the fused C decode step among them) and one full torch
        # forward sum in different orders, a few ulp apart (relative 3e-7 on a log-probability of -41)
        assert r.token_logprobs == pytest.approx(want, abs=1e-5, rel=1e-6)
        assert r.total == pytest.approx(sum(want), abs=1e-4)
        assert r.greedy == all(hits)


@pytest.fixture(scope="module")
def engine():
    eng = Engine(tiny_model(seed=11), ByteTokenizer(), max_batch_size=3, max_seq_len=160)
    yield eng
    eng.close()


def test_single_and_batched_rows_of_different_lengths(engine):
    g = torch.Generator().manual_seed(0)
    prompts = [rand_ids(g, n) for n in (1, 7, 30, 3, 12)]
    conts = [rand_ids(g, n) for n in (5, 1, 9, 20, 2)]
    check(engine.model, prompts[:1], conts[:1], engine.score(prompts[:1], conts[:1]))
    check(engine.model, prompts, conts, engine.score(prompts, conts, batch_size=2))


def test_shared_prefix_and_repeated_prompts(engine):
    g = torch.Generator().manual_seed(1)
    header = rand_ids(g, 40)
    questions = [header + rand_ids(g, n) for n in (4, 9, 1)]
    # four answers per question, of different lengths (one-token answers and longer ones)
    prompts, conts = [], []
    for q in questions:
        for n in (1, 3, 1, 6):
            prompts.append(q)
            conts.append(rand_ids(g, n))
    check(engine.model, prompts, conts, engine.score(prompts, conts, batch_size=2))
    # a prompt that is a prefix of another, and identical rows
    p2 = [header, header + [5, 6], header, header]
    c2 = [[5, 6, 7], [7], [9], [9]]
    check(engine.model, p2, c2, engine.score(p2, c2))


def test_consecutive_calls_reuse_the_shared_prefix(engine):
    g = torch.Generator().manual_seed(2)
    header = rand_ids(g, 50)
    before = engine._scorer.reused_tokens
    for _ in range(3):
        prompts = [header + rand_ids(g, 5) for _ in range(2)]
        conts = [rand_ids(g, 3) for _ in range(2)]
        check(engine.model, prompts, conts, engine.score(prompts, conts))
    assert engine._scorer.reused_tokens - before >= 2 * 50  # the second and third call ran no header
    # one row per call: everything but the prompt's last token is the cached prefix
    prompt = header + rand_ids(g, 20)
    reused = []
    for n in (4, 8):
        cont = rand_ids(g, n)
        check(engine.model, [prompt], [cont], engine.score([prompt], [cont]))
        reused.append(engine._scorer.reused_tokens)
    assert reused[1] - reused[0] == len(prompt) - 1  # the second call ran only the prompt's last token


def test_greedy_flag_on_the_engines_own_greedy_output(engine):
    prompt = ByteTokenizer().encode("Once upon a time")
    out = engine.generate([prompt], GREEDY)[0].token_ids
    changed = out[:5] + [(out[5] + 1) % 256] + out[6:]
    a, b = engine.score([prompt, prompt], [out, changed])
    assert a.greedy and not b.greedy
    check(engine.model, [prompt, prompt], [out, changed], [a, b])
    assert a.total > b.total


def test_text_inputs_and_bad_input(engine):
    (r,) = engine.score(["Hello"], [" world"])
    check(engine.model, [list(b"Hello")], [list(b" world")], [r])
    with pytest.raises(ValueError, match="context holds 160"):
        engine.score([[1] * 100], [[2] * 61])
    with pytest.raises(ValueError, match="continuation is empty"):
        engine.score([[1]], [[]])
    with pytest.raises(ValueError, match="2 prompts for 1"):
        engine.score([[1], [2]], [[3]])
    assert engine.score([], []) == []


def test_score_while_the_engine_generates():
    model = tiny_model(seed=12)
    # the caller steps this engine, so the generation is exactly half-way while it scores
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=300, background=False)
    solo = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=300)
    try:
        params = GREEDY.replace(max_new_tokens=200)
        handle = eng.submit("a long generation", params)
        for _ in range(100):
            eng.step()
        g = torch.Generator().manual_seed(3)
        prompts = [rand_ids(g, 30) for _ in range(4)]
        conts = [rand_ids(g, 10) for _ in range(4)]
        results = []
        worker = threading.Thread(target=lambda: results.append(eng.score(prompts, conts)))
        worker.start()
        worker.join()
        assert eng.num_active == 1  # the generation holds its slot and KV cache while we score
        check(model, prompts, conts, results[0])
        assert handle.result().token_ids == solo.generate(["a long generation"], params)[0].token_ids
    finally:
        eng.close()
        solo.close()
