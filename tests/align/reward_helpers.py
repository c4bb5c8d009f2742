"""Shared pieces of the reward/DPO tests: a byte-level chat tokenizer and a tiny random Qwen."""

from __future__ import annotations

import pytest
import torch

from hf_reference import randomise
from openqwen import Qwen, QwenConfig
from openqwen.align.synthetic import preference_pairs

EOT, IM_START, IM_END = 256, 257, 258


class ByteChatTokenizer:
    """ids 0..255 are bytes, then <|endoftext|>, <|im_start|>, <|im_end|>; ChatML like QwenTokenizer's."""

    vocab_size = 259
    eos_id, im_start_id, im_end_id = EOT, IM_START, IM_END

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        return list(text.encode("utf-8"))

    def apply_chat_template(self, messages, add_generation_prompt=True):
        ids: list[int] = []
        for m in messages:
            ids += [IM_START] + self.encode(f"{m['role']}\n{m['content']}") + [IM_END] + self.encode("\n")
        if add_generation_prompt:
            ids += [IM_START] + self.encode("assistant\n")
        return ids


def tiny_qwen(seed: int = 0, tied: bool = True, **kw) -> Qwen:
    cfg = dict(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, seq_length=128, max_position_embeddings=256, tie_word_embeddings=tied)
    cfg.update(kw)
    torch.manual_seed(seed)
    return randomise(Qwen(QwenConfig(**cfg)), seed)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from openqwen import Qwen, QwenConfig, save_model
    from openqwen.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("base")
    texts = [p.messages[0]["content"] + " " + p.chosen + " " + p.rejected
             for p in preference_pairs("train", 300, 0)]
    tok = train_tokenizer(texts, vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    save_model(Qwen(QwenConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, tie_word_embeddings=True, seq_length=64,
                               max_position_embeddings=128)), out)
    tok.save_pretrained(out)
    return out


QUICK = ["--model.seq_length", "128", "--train.plot", "false", "--train.progress", "false", "--train.tensorboard", "false", "--train.peak_flops", "1e10",
         "--train.batch_size", "4", "--train.eval_every", "0", "--train.eval_batches", "2"]
