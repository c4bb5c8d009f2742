"""Helpers for the training tests (imported by the test modules): real text packed with a byte-level encoder, and a nano model.

A byte encoder (ids 0..255, end-of-text 256) keeps the vocabulary tiny so that models with a few
thousand parameters train in seconds; the tokenizer itself is tested by its own tests.
"""

from __future__ import annotations

import json
from pathlib import Path

from openqwen import Qwen, QwenConfig


class ByteEncoder:
    eos_id = 256
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def real_texts(max_bytes: int = 120_000) -> list[str]:
    """Real text every machine has: the source of Python's json, email and http packages."""
    root = Path(json.__file__).resolve().parent.parent
    texts, used = [], 0
    for pkg in ("json", "email", "http", "urllib"):
        for p in sorted((root / pkg).glob("*.py")):
            t = p.read_text(encoding="utf-8", errors="replace")
            texts.append(t)
            used += len(t)
            if used >= max_bytes:
                return texts
    return texts


def nano_config(**kw) -> QwenConfig:
    base = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, tie_word_embeddings=True, seq_length=64, max_position_embeddings=256)
    base.update(kw)
    return QwenConfig(**base)
