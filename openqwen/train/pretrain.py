"""``openqwen pretrain``: next-token training of a Qwen on packed shards.

Documents were shuffled, joined with ``<|endoftext|>`` and cut into ``seq_len`` rows by the data
pipeline (the report's recipe); every real token carries loss. The output folder holds the model in
the Hugging Face Qwen2 layout and the tokenizer, next to ``checkpoints/``, ``metrics.jsonl`` and
``loss.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from openqwen.checkpoint import load_model
from openqwen.config import QwenConfig, get_preset
from openqwen.model import Qwen

from .batches import PackedRows
from .config import TrainConfig
from .distributed import DistInfo, init_distributed
from .lora import apply_lora
from .loop import Trainer


def round_up(n: int, k: int = 64) -> int:
    return -(-n // k) * k


def load_tokenizer(path: str | None):
    if path is None:
        return None
    from openqwen.tokenizer import QwenTokenizer

    return QwenTokenizer.from_pretrained(path)


def _init_from_tokenizer(cfg: TrainConfig):
    """The tokenizer saved with ``model.init_from`` (continued pretraining), or None when it has none."""
    from openqwen.tokenizer import TokenizerError  # noqa: PLC0415

    if not cfg.model.init_from:
        return None
    try:
        return load_tokenizer(cfg.model.init_from)
    except (TokenizerError, FileNotFoundError):
        return None


def build_model(cfg: TrainConfig, vocab_size: int | None, seq_len: int | None) -> Qwen:
    """A fresh model from the preset (seeded, identical on every rank) or the ``init_from`` folder."""
    m = cfg.model
    if m.init_from:
        model = load_model(m.init_from, dtype=torch.float32)
        if vocab_size is not None and vocab_size > model.config.vocab_size:
            raise ValueError(f"the tokenizer has {vocab_size} ids but {m.init_from} has only "
                             f"{model.config.vocab_size} embedding rows")
        return model.train()
    overrides: dict[str, Any] = dict(m.overrides)
    # presets store derived fields resolved; let them follow a changed width / head count
    if {"hidden_size", "num_attention_heads"} & overrides.keys():
        overrides.setdefault("head_dim", None)
    if "num_attention_heads" in overrides:
        base = get_preset(m.preset)
        if base.num_key_value_heads == base.num_attention_heads:
            overrides.setdefault("num_key_value_heads", None)
    if m.vocab_size or vocab_size:
        overrides["vocab_size"] = m.vocab_size or round_up(vocab_size)
    if m.seq_length or seq_len:
        overrides["seq_length"] = m.seq_length or seq_len
        overrides.setdefault("max_position_embeddings", max(get_preset(m.preset).max_position_embeddings,
                                                            overrides["seq_length"]))
    if m.dropout is not None:
        overrides["dropout"] = m.dropout
    config: QwenConfig = get_preset(m.preset, **overrides)
    torch.manual_seed(cfg.train.seed)
    return Qwen(config)


def pretrain_model(cfg: TrainConfig, rows: PackedRows, tokenizer: Any = None) -> Qwen:
    """The model :func:`run` trains on ``rows``: its vocabulary covers the shards' and the tokenizer's
    ids, its context the rows' length, with LoRA adapters when ``lora.rank`` is set."""
    vocab = max(rows.ds.vocab_size, tokenizer.vocab_size if tokenizer else 0)
    model = build_model(cfg, vocab, rows.seq_len)
    if cfg.lora.rank:
        apply_lora(model, cfg.lora)
    return model


def run(cfg: TrainConfig, info: DistInfo | None = None) -> dict[str, Any]:
    """Pretrain as ``cfg`` says; returns the run summary (with ``model_dir``)."""
    if not cfg.data.path:
        raise ValueError("data.path is not set: give packed shards (openqwen data pack ... --out DIR), "
                         "e.g. --data.path runs/data/packed")
    info = info or init_distributed(cfg.train.device)
    rows = PackedRows(cfg.data.path)
    val = None
    if cfg.data.val_path:
        val = PackedRows(cfg.data.val_path)
    elif cfg.data.val_sequences > 0:
        n = len(rows)
        if cfg.data.val_sequences >= n:
            raise ValueError(f"data.val_sequences={cfg.data.val_sequences} leaves no training data ({n} sequences)")
        rows, val = PackedRows(rows.ds, 0, n - cfg.data.val_sequences), PackedRows(rows.ds, n - cfg.data.val_sequences)
    tokenizer = load_tokenizer(cfg.data.tokenizer) if cfg.data.tokenizer else _init_from_tokenizer(cfg)
    train_rows = rows
    if cfg.data.fim_rate > 0:
        if tokenizer is None:
            raise ValueError("data.fim_rate needs the tokenizer's FIM tokens: set data.tokenizer (or init from a "
                             "model folder that has its tokenizer)")
        from .fim import FimRows, fim_token_ids  # noqa: PLC0415

        train_rows = FimRows(rows, cfg.data.fim_rate, fim_token_ids(tokenizer, cfg.data.fim_tokens),
                             tokenizer.eos_id, seed=cfg.data.seed)
    trainer = Trainer(cfg, pretrain_model(cfg, rows, tokenizer), train_rows, val_data=val, info=info, name="pretrain")
    summary = trainer.fit()
    trainer.export(cfg.train.out_dir, tokenizer)
    summary["model_dir"] = str(Path(cfg.train.out_dir))
    return summary
