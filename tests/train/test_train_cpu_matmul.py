"""oneDNN linear layers and loss products (train.cpu_matmul) against torch's own F.linear / cross-entropy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from openqwen import Qwen
from openqwen.train import cpu_matmul
from openqwen.train.chunked_loss import linear_cross_entropy
from openqwen.train.cpu_matmul import OneDNNLinear, resolve_cpu_matmul, runs_on_onednn, use_onednn_linears
from openqwen.train.tasks import NextTokenTask

from train_helpers import nano_config

pytestmark = pytest.mark.skipif(not cpu_matmul.onednn_available(), reason="this torch build has no oneDNN")
CPU = torch.device("cpu")


def test_onednn_linear_forward_and_gradients_equal_f_linear():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 70, 48, generator=g), torch.randn(96, 48, generator=g), torch.randn(96, generator=g)
    grad = torch.randn(3, 70, 96, generator=g)
    ours = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    y = OneDNNLinear.apply(*ours)
    y.backward(grad)
    y_ref = F.linear(*ref)
    y_ref.backward(grad)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-5, atol=1e-4)


def test_chunked_loss_on_onednn_equals_plain_cross_entropy():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(300, 32, generator=g, requires_grad=True)
    w = torch.randn(500, 32, generator=g, requires_grad=True)
    t = torch.randint(0, 500, (300,), generator=g)
    loss = linear_cross_entropy(h, w, t, chunk_rows=128, onednn=True)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.t(), t, reduction="sum")
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5 * ref.item()
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-4)


def test_losses_past_underflow_are_exact():
    """Targets whose softmax probability underflows in fp32 (losses of hundreds of nats) take the
    log-sum-exp path: the loss equals the plain one, never inf."""
    g = torch.Generator().manual_seed(2)
    h = (torch.randn(12, 8, generator=g) * 60).requires_grad_()
    w = torch.randn(40, 8, generator=g)
    t = torch.randint(0, 40, (12,), generator=g)
    per_row = F.cross_entropy(h.detach().double() @ w.double().t(), t, reduction="none")
    ref = per_row.sum().item()
    got = linear_cross_entropy(h, w, t, chunk_rows=5)
    assert per_row.max() > 150  # some target's fp32 softmax probability is exactly 0: -log p alone is inf
    assert ref > 500 and abs(got.item() - ref) < 1e-4 * ref


def test_model_with_onednn_linears_trains_like_the_default_and_deepcopies():
    torch.manual_seed(0)
    base = Qwen(nano_config())
    ours = copy.deepcopy(base)
    layers = len(ours.layers)
    assert use_onednn_linears(ours) == 4 * layers + 1  # qkv, o, gate_up, down per layer + the head
    assert runs_on_onednn(ours.lm_head) and not runs_on_onednn(base.lm_head)
    twin = copy.deepcopy(ours)  # the copy's linears read the copy's weights (a PPO reference model)
    with torch.no_grad():
        twin.layers[0].mlp.down_proj.weight.zero_()
    ids = torch.randint(0, 320, (2, 48))
    batch = {"input_ids": ids, "labels": ids}
    task = NextTokenTask()
    for model in (base, ours):
        loss, _ = task.loss(model, batch)
        loss.backward()
    torch.testing.assert_close(task.loss(ours, batch)[0], task.loss(base, batch)[0], rtol=1e-5, atol=0)
    for (name, p), q in zip(base.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert not torch.equal(twin(ids), ours(ids))


def test_resolve_auto_and_refusals(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: "AuthenticAMD")
    assert resolve_cpu_matmul("auto", CPU, "fp32", False, "none")[0] == "onednn"
    for args in (("bf16", False, "none"), ("fp32", True, "none"), ("fp32", False, "fsdp")):
        assert resolve_cpu_matmul("auto", CPU, *args)[0] == "mkl"
    assert resolve_cpu_matmul("auto", torch.device("cuda"), "fp32", False, "none")[0] == "mkl"
    monkeypatch.setattr(cpu_matmul, "cpu_vendor", lambda: "GenuineIntel")
    assert resolve_cpu_matmul("auto", CPU, "fp32", False, "none")[0] == "mkl"
    assert resolve_cpu_matmul("onednn", CPU, "fp32", False, "ddp")[0] == "onednn"
    with pytest.raises(ValueError, match="train.compile is on"):
        resolve_cpu_matmul("onednn", CPU, "fp32", True, "none")
    with pytest.raises(ValueError, match="must be one of auto, mkl, onednn"):
        resolve_cpu_matmul("blas", CPU, "fp32", False, "none")


def test_bf16_prefill_products_follow_the_cpu_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("OPENQWEN_PREFILL_PRODUCTS", raising=False)
    monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
    monkeypatch.setattr(cpu_matmul, "cpu_flags", lambda: frozenset({"avx2", "avx512f", "avx512_bf16"}))
    assert cpu_matmul.bf16_products_preferred()
    monkeypatch.setattr(cpu_matmul, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no native bf16
    assert not cpu_matmul.bf16_products_preferred()
    monkeypatch.setattr(cpu_matmul, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert cpu_matmul.bf16_products_preferred()
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "fp32")
    assert not cpu_matmul.bf16_products_preferred()
    monkeypatch.setattr(cpu_matmul, "cpu_flags", lambda: frozenset())
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "bf16")
    assert cpu_matmul.bf16_products_preferred()
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "fp16")
    with pytest.raises(ValueError, match="OPENQWEN_PREFILL_PRODUCTS must be one of auto, fp32, bf16, got 'fp16'"):
        cpu_matmul.bf16_products_preferred()
