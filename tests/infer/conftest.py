"""Fixtures of the inference tests."""

from __future__ import annotations

import pytest

from openqwen.infer import quant


@pytest.fixture(params=["kernel", "torch-fallback"])
def backend(request, monkeypatch):
    """Run a quantised-linear test twice: on the C kernels (skipped when they do not build here) and
    on the torch fallback that machines without a compiler use."""
    if request.param == "torch-fallback":
        monkeypatch.setattr(quant, "load_kernels", lambda: None)
    elif quant.load_kernels() is None:
        pytest.skip(f"C kernels unavailable: {quant.kernel_status()}")
    return request.param
