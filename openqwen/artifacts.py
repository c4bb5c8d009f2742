"""Where the real artifacts of ``../shared/tools/fetch-artifacts`` live on this machine.

Users elsewhere pass their own paths; this only gives tests, benchmarks and the demo a default.
"""

from __future__ import annotations

import os
from pathlib import Path

FILES = {
    "qwen-tiktoken": "qwen.tiktoken",
    "qwen2-tokenizer-json": "qwen2-tokenizer.json",
    "humaneval": "HumanEval.jsonl.gz",
    "mmlu-test": "mmlu-test.jsonl",
    "shakespeare": "shakespeare-plays.zip",
    "qwen25-coder-0.5b-instruct-gguf": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}


def artifacts_dir() -> Path:
    return Path(os.environ.get("OPENQWEN_ARTIFACTS", "~/.cache/openqwen-artifacts")).expanduser()


def artifact_path(name: str) -> Path | None:
    """Path of a fetched artifact (by its fetch-artifacts name), or None when it is absent."""
    if name not in FILES:
        raise KeyError(f"unknown artifact {name!r}; known: {', '.join(FILES)}")
    path = artifacts_dir() / FILES[name]
    return path if path.exists() else None
