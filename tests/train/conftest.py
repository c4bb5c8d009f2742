"""Fixtures of the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from train_helpers import ByteEncoder, real_texts


@pytest.fixture(scope="session")
def packed_text(tmp_path_factory) -> Path:
    from openqwen.data.packing import pack_documents

    out = tmp_path_factory.mktemp("packed") / "data"
    pack_documents(real_texts(), ByteEncoder(), out, seq_len=64, seed=0, progress=False)
    return out
