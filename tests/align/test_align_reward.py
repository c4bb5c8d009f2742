"""The reward model: read at the last real token whatever the padding, the Bradley-Terry loss against
a formula by hand, calibration, training through the one Trainer, and files transformers reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openqwen.align import synthetic
from openqwen.align.pairs import PairRows, encode_pairs, pad_rows
from openqwen.align.reward import (RewardModel, RewardTask, expected_calibration_error, load_reward_model,
                                   pair_metrics, save_reward_model, score_pairs)
from reward_helpers import EOT, ByteChatTokenizer, tiny_qwen


def _reference_reward(rm: RewardModel, seq: list[int]) -> float:
    """The head on the hidden state of the row's last token, from a forward of the row alone (no padding)."""
    with torch.no_grad():
        hidden = rm.backbone.hidden_states(torch.tensor([seq]))[0, -1]
        return float(hidden @ rm.head.weight[0])


@pytest.fixture(scope="module")
def rm():
    return RewardModel.from_backbone(tiny_qwen(seed=1), seed=3).eval()


SEQS = [[5, 9, 200, 3, 44, 17, 258], [7, 8, 258], list(range(30, 61)) + [258], [99, 258], [1, 2, 3, 4, 5, 258]]


def test_reward_is_the_head_at_the_last_real_token_for_any_padding_and_batch(rm):
    want = np.array([_reference_reward(rm, s) for s in SEQS])
    with torch.no_grad():
        for left in (False, True):
            ids, mask = pad_rows(SEQS, pad_id=EOT, length=40, left=left)
            np.testing.assert_allclose(rm(ids, mask).numpy(), want, rtol=0, atol=2e-5)
            for size in (1, 2, 3):  # any batch split gives the same rewards
                got = np.concatenate([rm(ids[k : k + size], mask[k : k + size]).numpy() for k in range(0, len(SEQS), size)])
                np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        assert rm(*pad_rows(SEQS, pad_id=EOT)).dtype == torch.float32
        # the pad id itself does not matter either: padding is invisible, not merely a harmless token
        np.testing.assert_allclose(rm(*pad_rows(SEQS, pad_id=7, length=40, left=True)).numpy(), want, atol=2e-5)
    np.testing.assert_allclose(rm.score_sequences(SEQS, batch_size=2, pad_id=EOT), want, atol=2e-5)


def test_bradley_terry_loss_and_metrics_against_numpy(rm):
    tok = ByteChatTokenizer()
    pairs = synthetic.preference_pairs("train", 6, seed=2)
    pairs[0].margin = 0.7
    encoded, dropped = encode_pairs(pairs, tok, max_len=128)
    assert dropped == 0 and encoded[0].prompt[-3:] == tok.encode("nt\n")[-3:] and encoded[0].chosen[-1] == 258
    rows = PairRows(encoded, seq_len=128, pad_id=EOT)
    batch = {k: torch.as_tensor(np.stack([rows[i][k] for i in range(len(rows))])) for k in rows[0]}
    task = RewardTask(rm.head, margin=0.25)
    with torch.no_grad():
        loss, metrics = task.loss(rm.backbone, batch)
    rc = np.array([_reference_reward(rm, p.prompt + p.chosen) for p in encoded])
    rr = np.array([_reference_reward(rm, p.prompt + p.rejected) for p in encoded])
    m = np.array([p.margin for p in encoded]) + 0.25
    want = np.sum(np.log1p(np.exp(-(rc - rr - m))))
    assert task.count(batch) == 6
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(metrics["accuracy"]) == np.sum(rc > rr)
    assert float(metrics["reward_margin"]) == pytest.approx(np.sum(rc - rr), abs=1e-4)
    got_c, got_r = score_pairs(rm, encoded, batch_size=4, pad_id=EOT)
    np.testing.assert_allclose(got_c, rc, atol=2e-5)
    np.testing.assert_allclose(got_r, rr, atol=2e-5)


def test_calibration_and_pair_metrics_by_hand():
    assert expected_calibration_error(np.zeros(8)) == pytest.approx(0.0)  # p = 0.5, wins half the time
    assert expected_calibration_error(np.full(8, np.log(3.0))) == pytest.approx(0.25)  # says 0.75, is always right
    assert expected_calibration_error(np.full(8, 30.0)) == pytest.approx(0.0, abs=1e-9)
    m = pair_metrics([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 0.0])
    assert m["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert m["margin"] == pytest.approx(0.75)
    assert m["bt_loss"] == pytest.approx(np.mean(np.log1p(np.exp(-np.array([1.0, 0.0, -1.0, 3.0])))))


def _hf_rewards(folder, seqs, pad_id):
    import transformers

    hf = transformers.Qwen2ForSequenceClassification.from_pretrained(folder, attn_implementation="eager").eval()
    assert hf.config.num_labels == 1 and hf.score.weight.shape == (1, hf.config.hidden_size)
    ids, mask = pad_rows(seqs, pad_id)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits[:, 0].numpy()


@pytest.mark.parametrize("tied", [True, False])
def test_saved_folder_loads_in_transformers_and_back_with_the_same_rewards(tmp_path, tied):
    rm = RewardModel.from_backbone(tiny_qwen(seed=4, tied=tied), seed=5).eval()
    want = np.array([_reference_reward(rm, s) for s in SEQS])
    save_reward_model(rm, tmp_path, pad_token_id=EOT, metrics={"accuracy": 0.5})
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForSequenceClassification"] and config["pad_token_id"] == EOT
    np.testing.assert_allclose(_hf_rewards(tmp_path, SEQS, EOT), want, atol=1e-4)
    back = load_reward_model(tmp_path)
    with torch.no_grad():
        np.testing.assert_allclose(back(*pad_rows(SEQS, EOT, left=True)).numpy(), want, atol=2e-5)
        for a, b in zip(rm.state_dict().values(), back.state_dict().values()):
            assert torch.equal(a, b)
