"""The chunked, head-fused cross-entropy against the plain ``F.cross_entropy`` over full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from openqwen import Qwen
from openqwen.train.batches import IGNORE_INDEX
from openqwen.train.chunked_loss import linear_cross_entropy, output_weight
from openqwen.train.tasks import NextTokenTask

from train_helpers import nano_config


def _plain(h, w, t):
    return F.cross_entropy(h @ w.t(), t, ignore_index=IGNORE_INDEX, reduction="sum")


@pytest.mark.parametrize("chunk_rows", [7, 37, 128, 10_000])
def test_loss_and_gradients_equal_plain_cross_entropy_in_float64(chunk_rows):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 24, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(50, 24, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (300,), generator=g)
    t[::5] = IGNORE_INDEX  # masked positions carry neither loss nor gradient
    loss = linear_cross_entropy(h, w, t, chunk_rows=chunk_rows)
    (loss * 0.3).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    ref = _plain(h, w, t)
    (ref * 0.3).backward()
    assert abs(loss.item() - ref.item()) < 1e-9 * ref.item()
    torch.testing.assert_close(gh, h.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(gw, w.grad, rtol=0, atol=1e-12)
    assert gh[::5].abs().max() == 0


def test_no_grad_and_all_masked():
    h, w = torch.randn(10, 8), torch.randn(20, 8, requires_grad=True)
    t = torch.randint(0, 20, (10,))
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(h, w, t, chunk_rows=3), _plain(h, w, t), rtol=1e-5)
    empty = linear_cross_entropy(h, w, torch.full((10,), IGNORE_INDEX))
    empty.backward()
    assert empty.item() == 0.0 and w.grad.abs().max() == 0
    with pytest.raises(ValueError, match="chunk_rows"):
        linear_cross_entropy(h, w, t, chunk_rows=0)


def test_bf16_autocast_close_to_fp32():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(64, 32, generator=g), torch.randn(100, 32, generator=g)
    t = torch.randint(0, 100, (64,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, t)
    assert got.dtype == torch.float32
    assert abs(got.item() - _plain(h, w, t).item()) < 2e-2 * _plain(h, w, t).item()


def test_next_token_task_equals_full_logits_loss_on_a_packed_batch():
    """The task's loss and model gradients (tied head included) match the full-logits loss on a packed
    SFT-like batch with masked labels, positions and segments."""
    torch.manual_seed(0)
    model = Qwen(nano_config())
    assert output_weight(model) is model.lm_head.weight
    ids = torch.randint(0, 320, (2, 64))
    labels = ids.clone()
    labels[:, :20] = IGNORE_INDEX
    segments = torch.cat([torch.zeros(2, 30, dtype=torch.long), torch.ones(2, 34, dtype=torch.long)], 1)
    positions = torch.cat([torch.arange(30), torch.arange(34)]).expand(2, 64)
    batch = {"input_ids": ids, "labels": labels, "positions": positions, "segment_ids": segments}
    loss, _ = NextTokenTask().loss(model, batch)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids, positions=positions, segment_ids=segments)
    ref = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX,
                          reduction="sum")
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5 * ref.item()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)

    class Wrapper(torch.nn.Module):  # DDP's shape: the model under .module, only forward synchronises
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert output_weight(Wrapper(model)) is None  # a wrapper takes the plain loss through its forward
