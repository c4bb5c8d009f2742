"""Shared pieces of the PPO tests: the inference tests' byte-level tokenizer and tiny random model
(imported from tests/infer, not written twice), and nano PPO settings."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))

from infer_helpers import ByteTokenizer, tiny_model  # noqa: E402,F401
