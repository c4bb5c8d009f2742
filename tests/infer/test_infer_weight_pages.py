"""Quantised buffers moved onto huge pages: the same values, shared storages still shared, the model's
function unchanged, and the pages really huge where the kernel offers them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from infer_helpers import tiny_model

from openqwen.infer.quant import Int8Embedding, Int8Linear, quantize_int4
from openqwen.infer.weight_pages import huge_pages_available, place_buffers_on_huge_pages


def anon_huge_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


@pytest.mark.skipif(not huge_pages_available(), reason="transparent huge pages are off on this kernel")
def test_buffers_move_with_their_values_and_sharing():
    model = quantize_int4(tiny_model(seed=3), group_size=32).eval()
    head = Int8Linear(torch.randn(65536, 64), None)  # 4 MB of int8 codes: whole 2 MB pages
    model.lm_head = head
    model.embed_tokens = Int8Embedding.sharing(head)  # the tied form: one storage, two modules
    ids = torch.randint(0, 259, (2, 12))
    with torch.no_grad():
        before = model(ids)
    values = {name: b.clone() for name, b in model.named_buffers(remove_duplicate=False)}
    old_ptr = head.weight.data_ptr()
    huge_before = anon_huge_kb()
    moved = place_buffers_on_huge_pages(model, min_bytes=1 << 16)
    assert moved >= 65536 * 64
    assert head.weight.data_ptr() != old_ptr
    assert model.embed_tokens.weight.data_ptr() == head.weight.data_ptr()  # still shared, not copied twice
    for name, b in model.named_buffers(remove_duplicate=False):
        assert torch.equal(b, values[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, atol=0, rtol=0)
    assert anon_huge_kb() >= huge_before + 2048  # at least one 2 MB page backs them now


def test_nothing_moves_without_huge_pages(monkeypatch):
    from openqwen.infer import weight_pages

    monkeypatch.setattr(weight_pages, "huge_pages_available", lambda: False)
    model = quantize_int4(tiny_model(seed=3), group_size=32)
    ptrs = [b.data_ptr() for b in model.buffers()]
    assert place_buffers_on_huge_pages(model, min_bytes=1) == 0
    assert [b.data_ptr() for b in model.buffers()] == ptrs
