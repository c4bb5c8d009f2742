"""Fixtures shared by the tokenizer tests: the official vocabulary files and a multilingual sample."""

from __future__ import annotations

import pytest

from openqwen.tokenizer import QwenTokenizer
from tokenizer_samples import multilingual_sample


@pytest.fixture(scope="session")
def qwen_tiktoken(artifact):
    return artifact("qwen-tiktoken")


@pytest.fixture(scope="session")
def qwen2_json(artifact):
    return artifact("qwen2-tokenizer-json")


@pytest.fixture(scope="session")
def tok(qwen_tiktoken) -> QwenTokenizer:
    """The first-generation release: qwen.tiktoken with its 208 specials."""
    return QwenTokenizer.from_pretrained(qwen_tiktoken)


@pytest.fixture(scope="session")
def hf_tok(qwen2_json):
    """The independent reference: HF tokenizers reading the Qwen2 tokenizer.json."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(qwen2_json))


@pytest.fixture(scope="session")
def sample() -> list[str]:
    return multilingual_sample()


@pytest.fixture(scope="session")
def byte_tok() -> QwenTokenizer:
    """A vocabulary of the 256 bytes and the chat trio: needs no artifact, one id per byte."""
    return QwenTokenizer({bytes([b]): b for b in range(256)},
                         {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258})
