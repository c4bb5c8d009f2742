"""``openqwen sft``: supervised fine-tuning on chat data with the loss on assistant tokens only.

Starts from a model folder (``model.init_from``, e.g. the pretraining output) whose tokenizer is
saved alongside (or ``data.tokenizer``). Conversations are ChatML-encoded with the tokenizer's
assistant mask and packed several per row with attention kept inside each (see
:mod:`openqwen.train.sft_data`). The report's SFT settings are in ``recipes/sft.yaml``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .distributed import DistInfo, init_distributed
from .lora import apply_lora
from .loop import Trainer
from .pretrain import build_model, load_tokenizer
from openqwen.data.synthetic_code import code_chats
from openqwen.data.synthetic_math import math_chats, math_items, parse_categories

from .sft_data import ChatRows, builtin_chat_set, encode_chats, read_chat_jsonl


HELDOUT_MATH_CHATS = 360
"""Conversations of ``builtin-math-test`` (the held-out split of the built-in math data)."""


def load_conversations(files: list[str], cfg: TrainConfig) -> list[list[dict[str, str]]]:
    out = []
    for f in files:
        if f == "builtin":
            out.extend(builtin_chat_set(cfg.sft.builtin_size, cfg.sft.builtin_seed))
        elif f == "builtin-code":  # the train split of the built-in Python function tasks
            out.extend(code_chats(cfg.sft.builtin_size, cfg.sft.builtin_seed))
        elif f.split(":")[0] == "builtin-math":  # builtin-math:add+sub+mul: only those categories
            cats = parse_categories(f.partition(":")[2])
            out.extend(math_chats(cfg.sft.builtin_size, cfg.sft.builtin_seed, cats))
        elif f.split(":")[0] == "builtin-math-test":  # held-out questions with worked solutions: validation
            cats = parse_categories(f.partition(":")[2])
            out.extend(it.messages() for it in math_items("test", HELDOUT_MATH_CHATS, cfg.sft.builtin_seed, cats))
        else:
            out.extend(read_chat_jsonl(f))
    return out


def build_rows(files: list[str], cfg: TrainConfig, tokenizer: Any, seq_len: int, seed: int,
               mask_prompt: bool = True) -> tuple[ChatRows, int]:
    chats, dropped = encode_chats(load_conversations(files, cfg), tokenizer, cfg.sft.system_prompt, seq_len,
                                  mask_prompt)
    return ChatRows(chats, seq_len, pad_id=tokenizer.eos_id, pack=cfg.sft.pack, seed=seed), dropped


STAGE_SHORTHANDS = {"lr": "optim.lr", "max_steps": "train.max_steps", "warmup_steps": "optim.warmup_steps",
                    "epochs": "sft.epochs", "val_files": "sft.val_files", "mask_prompt": "sft.mask_prompt",
                    "builtin_size": "sft.builtin_size"}


def stage_configs(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """One config per entry of ``sft.stages`` (multi-stage SFT, as Code-Qwen-Chat): stage k starts
    from stage k-1's exported model with a fresh optimiser and writes ``OUT/NAME``; the last stage
    writes ``OUT`` itself. A stage is a mapping with ``name``, ``train_files`` and any overrides as
    ``section.key`` or a shorthand (``lr``, ``max_steps``, ``warmup_steps``, ``epochs``, ``val_files``,
    ``mask_prompt``, ``builtin_size``)."""
    out, prev = [], cfg.model.init_from
    names: set[str] = set()
    for k, stage in enumerate(cfg.sft.stages):
        if not isinstance(stage, dict) or not stage.get("name") or not stage.get("train_files"):
            raise ValueError(f"sft.stages[{k}] needs a name and train_files, e.g. "
                             "{name: code, train_files: [code.jsonl], lr: 1e-5, max_steps: 500}")
        name = str(stage["name"])
        if name in names or "/" in name:
            raise ValueError(f"sft.stages[{k}]: stage name {name!r} is repeated or has a '/'")
        names.add(name)
        c = copy.deepcopy(cfg)
        c.sft.stages = []
        for key, value in stage.items():
            if key == "name":
                continue
            dotted = STAGE_SHORTHANDS.get(key, key if "." in key else f"sft.{key}")
            c.set(dotted, value)
        last = k == len(cfg.sft.stages) - 1
        c.train.out_dir = cfg.train.out_dir if last else str(Path(cfg.train.out_dir) / name)
        c.model.init_from = prev
        prev = c.train.out_dir
        out.append((name, c))
    return out


def run(cfg: TrainConfig, info: DistInfo | None = None) -> dict[str, Any]:
    """SFT as ``cfg`` says: one stage, or each of ``sft.stages`` in turn (see :func:`stage_configs`)."""
    if cfg.sft.stages:
        summaries = {}
        for name, c in stage_configs(cfg):
            done = Path(c.train.out_dir) / "summary.json"
            if done.exists() and Path(c.train.out_dir, "model.safetensors").exists() and name != cfg.sft.stages[-1]["name"]:
                summaries[name] = json.loads(done.read_text())  # finished in an earlier call: resume after it
                continue
            summaries[name] = run_stage(c, info)
        last = summaries[cfg.sft.stages[-1]["name"]]
        return {**last, "stages": summaries}
    return run_stage(cfg, info)


def run_stage(cfg: TrainConfig, info: DistInfo | None = None) -> dict[str, Any]:
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
