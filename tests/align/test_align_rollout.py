"""Rollouts from the shared engine: the log-probs of the distribution actually sampled from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams
from ppo_helpers import ByteTokenizer, tiny_model


def nucleus_logprob(logits: np.ndarray, token: int, temperature: float, top_k: int, top_p: float) -> float:
    """Independent reference in float64 numpy: temperature, top-k, then the smallest descending-probability
    prefix whose mass reaches top_p, renormalised; the log-prob of ``token`` in it (-inf outside)."""
    z = logits.astype(np.float64) / temperature
    order = np.argsort(-z, kind="stable")
    if top_k:
        order = order[:top_k]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    n = 1
    while n < len(p) and p[:n].sum() < top_p:
        n += 1
    kept = order[:n]
    if token not in kept:
        return -np.inf
    zk = z[kept]
    return float(z[token] - (zk.max() + np.log(np.exp(zk - zk.max()).sum())))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 0.9), (0.7, 0, 0.8), (1.3, 20, 0.95), (1.0, 5, 1.0)])
def test_sampled_logprobs_are_those_of_the_renormalised_nucleus(temperature, top_k, top_p):
    model = tiny_model(seed=1).eval()
    tok = ByteTokenizer()
    eng = Engine(model, tok, max_batch_size=4, max_seq_len=96, background=False)
    prompts = [tok.encode(t) for t in ("Hello there", "2+2=", "The rain in", "Why")]
    params = [SamplingParams(max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p, seed=s,
                             logprobs=True, logprobs_mode="sampled", ignore_eos=True) for s in range(4)]
    outs = eng.generate(prompts, params)
    checked = 0
    for prompt, out in zip(prompts, outs):
        ids = prompt + out.token_ids
        with torch.no_grad():  # one full forward, not the engine's cached decode
            logits = model(torch.tensor([ids]))[0].double().numpy()
        logits[:, tok.vocab_size:] = -np.inf
        for i, (t, lp) in enumerate(zip(out.token_ids, out.logprobs)):
            ref = nucleus_logprob(logits[len(prompt) - 1 + i], t, temperature, top_k, top_p)
            assert np.isfinite(ref), "the sampled token lies in the nucleus"
            assert lp == pytest.approx(ref, abs=2e-4)
            checked += 1
    assert checked == 48
    # the raw mode is unchanged: the full softmax, which differs from the renormalised one under top-p
    raw = eng.generate(prompts[:1], params[0].replace(logprobs_mode="raw"))[0]
    assert raw.token_ids == outs[0].token_ids  # the mode changes what is reported, not what is drawn
    with torch.no_grad():
        full = torch.log_softmax(model(torch.tensor([prompts[0] + raw.token_ids]))[0].double()
                                 [:, :tok.vocab_size] / 1.0, -1).numpy()
    if temperature == 1.0:
        for i, (t, lp) in enumerate(zip(raw.token_ids, raw.logprobs)):
            assert lp == pytest.approx(full[len(prompts[0]) - 1 + i, t], abs=2e-4)
    if top_p < 1.0 or top_k:
        assert any(abs(a - b) > 1e-3 for a, b in zip(raw.logprobs, outs[0].logprobs))


def test_sampled_logprobs_of_greedy_are_zero_and_mode_is_checked():
    model = tiny_model(seed=2).eval()
    eng = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=64, background=False)
    out = eng.generate(["abc"], SamplingParams(max_new_tokens=5, temperature=0, logprobs=True,
                                               logprobs_mode="sampled", ignore_eos=True))[0]
    assert out.logprobs == [0.0] * 5
    with pytest.raises(ValueError, match="logprobs_mode"):
        SamplingParams(logprobs_mode="nucleus")


def test_rollouts_lay_out_the_engine_samples_and_training_logits_give_the_same_logprobs():
    from openqwen.align.rollout import generate_rollouts, rollout_params, sampled_logprobs
    from openqwen.tokenizer.chat import chat_prompt_ids

    model = tiny_model(seed=3).train()  # a model under training (no dropout): the engine must not need eval()
    tok = ByteTokenizer()
    eng = Engine(model, tok, max_batch_size=8, max_seq_len=128, background=False)
    prompts = [[{"role": "user", "content": q}] for q in ("What is 2 + 3?", "Hi", "What is 40 - 7?")]
    g = torch.Generator().manual_seed(7)
    params = rollout_params(16, temperature=3.0, top_p=0.9)  # the tiny model is peaked: flatten it to vary
    ro = generate_rollouts(eng, prompts, params, 2, g, pad_id=tok.eos_id)
    assert len(ro) == 6 and ro.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    for i in range(6):
        p = chat_prompt_ids(tok, prompts[i // 2], 127)
        n = int(ro.response_lengths[i])
        assert ro.input_ids[i, :len(p)].tolist() == p
        assert int(ro.attention_mask[i].sum()) == len(p) + n
        assert ro.action_mask[i].nonzero().flatten().tolist() == list(range(len(p) - 1, len(p) - 1 + n))
    assert ro.responses[0] != ro.responses[1]  # two responses per query, each with its own seed
    # the same generator state gives the same rollouts (what makes a resumed run exact)
    again = generate_rollouts(eng, prompts, params, 2, torch.Generator().manual_seed(7),
                              pad_id=tok.eos_id)
    assert torch.equal(again.input_ids, ro.input_ids)
    with torch.no_grad():
        logits = model(ro.input_ids)[:, :-1]
    lp, ent = sampled_logprobs(logits, ro.input_ids[:, 1:], temperature=3.0, top_p=0.9)
    m = ro.action_mask.bool()
    torch.testing.assert_close(lp[m], ro.behaviour_logprobs[m], atol=1e-4, rtol=0)
    # entropy of the renormalised nucleus, recomputed in numpy for one position
    row, col = m.nonzero()[0].tolist()
    z = logits[row, col].double().numpy() / 3.0
    order = np.argsort(-z)
    p = np.exp(z[order] - z.max()); p /= p.sum()
    n = int(((np.cumsum(p) - p) < 0.9).sum())
    q = p[:n] / p[:n].sum()
    assert float(ent[row, col]) == pytest.approx(float(-(q * np.log(q)).sum()), abs=1e-4)


def test_rollouts_follow_in_place_weight_updates():
    from openqwen.align.rollout import generate_rollouts, rollout_params

    model = tiny_model(seed=4).train()
    tok = ByteTokenizer()
    eng = Engine(model, tok, max_batch_size=4, max_seq_len=96, background=False)
    prompts = [[{"role": "user", "content": "What is 1 + 1?"}]]
    params = rollout_params(10, temperature=3.0, top_p=0.9)
    before = generate_rollouts(eng, prompts, params, 2, torch.Generator().manual_seed(0), pad_id=tok.eos_id)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(before.input_ids).float().pow(2).mean().backward()
    opt.step()  # in place, as the trainer's optimiser does
    after = generate_rollouts(eng, prompts, params, 2, torch.Generator().manual_seed(0), pad_id=tok.eos_id)
    fresh = Engine(model, tok, max_batch_size=4, max_seq_len=96, background=False)
    ref = generate_rollouts(fresh, prompts, params, 2, torch.Generator().manual_seed(0), pad_id=tok.eos_id)
    assert torch.equal(after.input_ids, ref.input_ids) and torch.equal(after.behaviour_logprobs, ref.behaviour_logprobs)
    assert not torch.equal(after.behaviour_logprobs, before.behaviour_logprobs)
