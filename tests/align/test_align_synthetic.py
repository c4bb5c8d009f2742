"""The built-in verifiable task: disjoint splits, the ground-truth reward, pairs that rank right."""

from __future__ import annotations

import random

import pytest

from openqwen.align import synthetic


def _questions(split, n, seed):
    return {m[0]["content"] for m in synthetic.prompts(split, n, seed)}


def test_splits_are_disjoint_whatever_n_and_seed():
    heldout = _questions("heldout", 2000, 0)  # more than the pool: every held-out question appears
    for seed in range(3):
        assert not _questions("train", 5000, seed) & heldout
    # single-digit operands: 100 sums and 55 non-negative differences, one in five held out, worked by hand
    # from (7A + 11B + 3 [op is -]) % 5 == 0
    assert len(heldout) == len(synthetic._pool("heldout")) == 31
    assert len(synthetic._pool("train")) == 155 - 31
    assert {"What is 0 + 0?", "What is 1 + 3?", "What is 2 + 1?", "What is 4 - 4?", "What is 9 - 9?"} <= heldout
    assert not {"What is 3 + 1?", "What is 1 + 0?", "What is 2 + 3?", "What is 4 - 1?"} & heldout


def test_prompts_are_deterministic_and_seeded():
    assert synthetic.prompts("train", 20, 3) == synthetic.prompts("train", 20, 3)
    assert synthetic.prompts("train", 20, 3) != synthetic.prompts("train", 20, 4)
    with pytest.raises(ValueError, match="split"):
        synthetic.prompts("test", 3, 0)


def test_ground_truth_reward_by_hand():
    m = [{"role": "user", "content": "What is 17 + 25?"}]
    assert synthetic.answer_of(m) == 42
    assert synthetic.score_response(m, "The answer is 42.") == 1.0
    assert synthetic.score_response(m, " The answer is 42.\n") == 1.0
    assert synthetic.score_response(m, "I think 42") == 0.5
    assert synthetic.score_response(m, "The answer is 41.") == 0.25
    assert synthetic.score_response(m, "no idea") == 0.0
    assert synthetic.is_correct(m, "it is 42") and not synthetic.is_correct(m, "The answer is 43.")
    sub = [{"role": "user", "content": "What is 30 - 8?"}]
    assert synthetic.formatted_answer(sub) == "The answer is 22."
    one = [{"role": "user", "content": "What is 7 + 8?"}]  # the task's own range: single digits
    assert synthetic.score_response(one, "The answer is 15.") == 1.0
    assert synthetic.score_response(one, "7 + 8 = 15") == 0.5
    assert synthetic.score_response(one, "The answer is 16.") == 0.25
    assert synthetic.score_response(one, "The answer is 7.") == 0.25
    with pytest.raises(ValueError, match="not a synthetic"):
        synthetic.score_response([{"role": "user", "content": "hello"}], "x")


def test_pairs_prefer_the_higher_ground_truth_and_noise_swaps_labels():
    pairs = synthetic.preference_pairs("train", 400, seed=1)
    assert all(synthetic.score_response(p.messages, p.chosen) == 1.0 > synthetic.score_response(p.messages, p.rejected)
               for p in pairs)
    # every kind of rejected reply occurs: wrong number in format, right number off format, both wrong
    kinds = {synthetic.score_response(p.messages, p.rejected) for p in pairs}
    assert kinds == {0.0, 0.25, 0.5}
    noisy = synthetic.preference_pairs("train", 2000, seed=1, noise=0.3)
    swapped = sum(synthetic.score_response(p.messages, p.chosen) < 1.0 for p in noisy) / len(noisy)
    assert 0.26 < swapped < 0.34
    sft = synthetic.sft_conversations("train", 5, 0)
    assert all(synthetic.score_response(c[:-1], c[-1]["content"]) == 1.0 for c in sft)


def test_subtraction_never_negative_and_operands_single_digit():
    rng = random.Random(0)
    for m in synthetic.prompts("train", 3000, 0):
        assert 0 <= synthetic.answer_of(m) <= 18
        a, _, b = m[0]["content"][len("What is "):-1].split()
        assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9
        rejected = synthetic.rejected_response(m, rng)
        assert not rejected.startswith("The answer is -")
        # wrong numbers are guesses from the answers' own range 0..18, so the number must be checked
        assert all(0 <= int(x) <= 18 for x in synthetic._INT_RE.findall(rejected))


def test_near_misses_are_off_by_one_or_two_and_zero_keeps_the_old_draws():
    # near_miss 0 consumes the random stream exactly as before the option existed (the held-out set)
    plain = synthetic.preference_pairs("heldout", 300, seed=3)
    assert [p.rejected for p in plain] == [p.rejected for p in synthetic.preference_pairs("heldout", 300, 3, near_miss=0.0)]
    near = synthetic.preference_pairs("train", 600, seed=3, near_miss=1.0)
    offsets = []
    for p in near:
        number, formatted = synthetic._stated_number(p.rejected)
        truth = synthetic.answer_of(p.messages)
        if number != truth:
            offsets.append(abs(number - truth))
            assert 0 <= number <= 18
    assert set(offsets) == {1, 2} and len(offsets) > 200
    # a guess is off by more than 2 most of the time (15 of its 18 values for a middle truth)
    guesses = [abs(synthetic._stated_number(p.rejected)[0] - synthetic.answer_of(p.messages)) for p in plain
               if synthetic._stated_number(p.rejected)[0] not in (None, synthetic.answer_of(p.messages))]
    assert sum(g > 2 for g in guesses) / len(guesses) > 0.6
    with pytest.raises(ValueError, match="near_miss"):
        synthetic.preference_pairs("train", 5, near_miss=1.5)


def test_styled_conversations_state_the_right_number_and_prefer_the_format_at_its_share():
    chats = synthetic.styled_conversations("train", 3000, seed=0, preferred=0.1)
    assert len(chats) == 3000 and not {c[0]["content"] for c in chats} & _questions("heldout", 2000, 0)
    replies = [(c[:-1], c[-1]["content"]) for c in chats]
    assert all(synthetic.is_correct(m, r) for m, r in replies)  # every wording states the true result
    preferred = sum(synthetic.is_preferred(m, r) for m, r in replies) / len(replies)
    assert abs(preferred - 0.1) < 0.02  # the binomial sd at n = 3000 is 0.0055
    # is_preferred is the ground truth's top score: the exact format and the right number
    (m,) = synthetic.prompts("train", 1, 0)
    truth = synthetic.answer_of(m)
    assert synthetic.is_preferred(m, f"The answer is {truth}.")
    assert not synthetic.is_preferred(m, f"the answer is {truth}") and not synthetic.is_preferred(m, f"The answer is {truth + 1}.")
    with pytest.raises(ValueError, match="preferred"):
        synthetic.styled_conversations("train", 1, preferred=1.0)
