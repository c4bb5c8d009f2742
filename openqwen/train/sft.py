"""``openqwen sft``: supervised fine-tuning on chat data with the loss on assistant tokens only.

Starts from a model folder (``model.init_from``, e.g. the pretraining output) whose tokenizer is
saved alongside (or ``data.tokenizer``). Conversations are ChatML-encoded with the tokenizer's
assistant mask and packed several per row with attention kept inside each (see
:mod:`openqwen.train.sft_data`). The report's SFT settings are in ``recipes/sft.yaml``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .distributed import DistInfo, init_distributed
from .lora import apply_lora
from .loop import Trainer
from .pretrain import build_model, load_tokenizer
from openqwen.data.synthetic_math import math_chats, math_items

from .sft_data import ChatRows, builtin_chat_set, encode_chats, read_chat_jsonl


HELDOUT_MATH_CHATS = 360
"""Conversations of ``builtin-math-test`` (the held-out split of the built-in math data)."""


def load_conversations(files: list[str], cfg: TrainConfig) -> list[list[dict[str, str]]]:
    out = []
    for f in files:
        if f == "builtin":
            out.extend(builtin_chat_set(cfg.sft.builtin_size, cfg.sft.builtin_seed))
        elif f == "builtin-math":
            out.extend(math_chats(cfg.sft.builtin_size, cfg.sft.builtin_seed))
        elif f == "builtin-math-test":  # held-out questions with worked solutions: validation data
            out.extend(it.messages() for it in math_items("test", HELDOUT_MATH_CHATS, cfg.sft.builtin_seed))
        else:
            out.extend(read_chat_jsonl(f))
    return out


def build_rows(files: list[str], cfg: TrainConfig, tokenizer: Any, seq_len: int, seed: int,
               mask_prompt: bool = True) -> tuple[ChatRows, int]:
    chats, dropped = encode_chats(load_conversations(files, cfg), tokenizer, cfg.sft.system_prompt, seq_len,
                                  mask_prompt)
    return ChatRows(chats, seq_len, pad_id=tokenizer.eos_id, pack=cfg.sft.pack, seed=seed), dropped


def run(cfg: TrainConfig, info: DistInfo | None = None) -> dict[str, Any]:
    if not cfg.model.init_from:
        raise ValueError("model.init_from is not set: SFT starts from a model folder, e.g. "
                         "--model.init_from runs/demo/pretrain")
    if not cfg.sft.train_files:
        raise ValueError("sft.train_files is empty: give chat JSONL files, or 'builtin' for the synthetic set")
    info = info or init_distributed(cfg.train.device)
    tokenizer = load_tokenizer(cfg.data.tokenizer or cfg.model.init_from)
    model = build_model(cfg, tokenizer.vocab_size, None)
    seq_len = cfg.model.seq_length or model.config.seq_length
    rows, dropped = build_rows(cfg.sft.train_files, cfg, tokenizer, seq_len, cfg.data.seed, cfg.sft.mask_prompt)
    if dropped and info.is_main:
        print(f"sft: dropped {dropped} conversations longer than {seq_len} tokens")
    val = build_rows(cfg.sft.val_files, cfg, tokenizer, seq_len, cfg.data.seed)[0] if cfg.sft.val_files else None
    if cfg.sft.epochs:
        per_step = cfg.train.batch_size * cfg.train.grad_accum * info.world_size
        cfg.train.max_steps = max(1, math.ceil(cfg.sft.epochs * len(rows) / per_step))
    if info.is_main:
        print(f"sft: {rows.num_conversations} conversations in {len(rows)} rows of {seq_len} tokens "
              f"({rows.fill:.0%} filled), {cfg.train.max_steps} steps")
    if cfg.lora.rank:
        apply_lora(model, cfg.lora)
    trainer = Trainer(cfg, model, rows, val_data=val, info=info, name="sft")
    summary = trainer.fit()
    trainer.export(cfg.train.out_dir, tokenizer)
    summary.update(model_dir=str(Path(cfg.train.out_dir)), conversations=rows.num_conversations,
                   rows=len(rows), dropped=dropped)
    return summary
