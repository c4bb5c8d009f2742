"""The engine on a model that is being trained: it never changes the model's mode, refuses dropout
unless asked, and sees weights updated in place (generation, fused decode, prefix reuse, scoring)."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, solo, tiny_model

from openqwen.infer.engine import Engine
from openqwen.infer.kernels import load_kernels
from openqwen.infer.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True)
LONG_PROMPT = "The history of a long conversation, turn one: " * 2


def train_step(model, optimizer):
    """One real optimizer step on the model, in place."""
    ids = torch.tensor([list(b"some training text for one step")])
    loss = torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def fresh(model, prompt):
    """Greedy ids of ``prompt`` on a fresh engine (no cached prefix, no fused step built before)."""
    return solo(model, prompt, GREEDY, max_seq_len=256).token_ids


@pytest.mark.parametrize("fused_optimizer", [True, False])
def test_generation_sees_an_optimizer_step_and_forgets_cached_prefixes(fused_optimizer):
    model = tiny_model(seed=21).train()
    # the fused AdamW (the trainer's) updates in place without bumping autograd versions
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, fused=fused_optimizer or None)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=256)
    try:
        first = eng.generate([LONG_PROMPT], GREEDY)[0]
        if load_kernels() is not None:
            assert eng.fused_status == "fused C decode step"  # the fused step decodes a train-mode model
        assert model.training  # the engine left the mode alone
        train_step(model, opt)
        # the next chat turn extends the first prompt: before the step its keys/values would be reused
        nxt = list(LONG_PROMPT.encode()) + first.token_ids + list(b" and then?")
        second = eng.generate([nxt], GREEDY)[0].token_ids
        assert eng.reused_tokens == 0  # keys computed with the old weights were not reused
        assert second == fresh(model, nxt)
        again = eng.generate([LONG_PROMPT], GREEDY)[0].token_ids
        assert again == fresh(model, LONG_PROMPT)
        assert again != first.token_ids  # the step changed the output, so the comparison means something
    finally:
        eng.close()


def test_prefix_reuse_still_works_without_weight_changes():
    model = tiny_model(seed=21).train()
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=256)
    try:
        first = eng.generate([LONG_PROMPT], GREEDY)[0]
        nxt = list(LONG_PROMPT.encode()) + first.token_ids + list(b" and then?")
        eng.generate([nxt], GREEDY)
        assert eng.reused_tokens == len(LONG_PROMPT.encode()) + len(first.token_ids) - 1
    finally:
        eng.close()


def test_explicit_weights_changed_for_writes_no_signature_sees():
    model = tiny_model(seed=22)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=256)
    try:
        first = eng.generate([LONG_PROMPT], GREEDY)[0]
        with torch.no_grad():
            model.layers[0].mlp.down_proj.weight.data.mul_(-1.0)  # through .data: no version bump
        eng.weights_changed()
        nxt = list(LONG_PROMPT.encode()) + first.token_ids + list(b" and then?")
        assert eng.generate([nxt], GREEDY)[0].token_ids == fresh(model, nxt)
        assert eng.reused_tokens == 0
    finally:
        eng.close()


def test_score_sees_an_optimizer_step():
    model = tiny_model(seed=23).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, fused=True)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=256)
    prompts = [list(LONG_PROMPT.encode()) + [1, 2], list(LONG_PROMPT.encode()) + [3]]
    conts = [[4, 5, 6], [7, 8]]

    def reference():
        with torch.no_grad():
            out = []
            for p, c in zip(prompts, conts):
                lp = torch.log_softmax(model(torch.tensor([p + c]))[0], -1)
                out.append([float(lp[len(p) - 1 + k, t]) for k, t in enumerate(c)])
            return out

    try:
        before = [r.token_logprobs for r in eng.score(prompts, conts)]
        assert before == [pytest.approx(x, abs=1e-5) for x in reference()]
        train_step(model, opt)
        after = [r.token_logprobs for r in eng.score(prompts, conts)]
        assert after == [pytest.approx(x, abs=1e-5) for x in reference()]
        assert after[0] != pytest.approx(before[0], abs=1e-3)
    finally:
        eng.close()


def test_dropout_in_training_mode_is_refused_unless_allowed():
    model = tiny_model(seed=24, dropout=0.5).train()
    eng = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=64)
    try:
        with pytest.raises(ValueError, match="model.eval()"):
            eng.submit("x", GREEDY)
        with pytest.raises(ValueError, match="allow_dropout"):
            eng.score([[1]], [[2]])
        model.eval()
        eval_out = eng.generate(["x"], GREEDY)[0].token_ids  # eval mode: no dropout, no refusal
        assert not model.training
    finally:
        eng.close()
    model.train()
    loose = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=64, allow_dropout=True)
    try:
        torch.manual_seed(0)
        outs = {tuple(loose.generate(["x"], GREEDY)[0].token_ids) for _ in range(3)}
        assert model.training and "fused" not in loose.fused_status.split("(")[0]
        assert outs != {tuple(eval_out)}  # dropout was applied, on request
    finally:
        loose.close()
