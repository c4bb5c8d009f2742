"""The SFT masking switch: with ``sft.mask_prompt`` the loss covers exactly the assistant tokens;
without it, every token of each conversation (but the first, which nothing inside it predicts)."""

from __future__ import annotations

import pytest

from openqwen.train.batches import IGNORE_INDEX
from openqwen.train.config import TrainConfig
from openqwen.train.sft_data import ChatRows, encode_chats

CONV = [{"role": "user", "content": "What is 7 * 6?"},
        {"role": "assistant", "content": "7 * 6 = 42\n#### 42"}]


@pytest.fixture(scope="module")
def tok(artifact):
    from openqwen import QwenTokenizer

    return QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))


def test_unmasked_rows_train_on_every_token(tok):
    masked, _ = encode_chats([CONV], tok, "You are a helpful assistant.", 256)
    full, _ = encode_chats([CONV], tok, "You are a helpful assistant.", 256, mask_prompt=False)
    assert masked[0].ids == full[0].ids
    reply = tok.encode(CONV[1]["content"]) + [tok.im_end_id]
    assert sum(masked[0].mask) == len(reply)  # the assistant's reply and its <|im_end|>
    row = ChatRows(full, 64, pad_id=tok.eos_id)[0]
    n = len(full[0].ids)
    assert row["labels"][1:n].tolist() == full[0].ids[1:] and row["labels"][0] == IGNORE_INDEX
    assert (row["labels"][n:] == IGNORE_INDEX).all()  # padding never carries loss


def test_mask_prompt_is_a_config_field():
    assert TrainConfig().sft.mask_prompt is True
    assert TrainConfig.load("math-sft.yaml").sft.mask_prompt is True
    assert TrainConfig.load(None, ["--sft.mask_prompt", "false"]).sft.mask_prompt is False
