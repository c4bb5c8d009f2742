"""The running reward normaliser against numpy over all the rewards at once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openqwen.align.normalize import RunningMoments


def test_running_moments_equal_numpy_over_many_batches_and_resume():
    rng = np.random.default_rng(0)
    # batches of varying size and a drifting scale, as a reward model's outputs drift during PPO
    batches = [rng.normal(3.0 + 0.1 * i, 1.0 + 0.05 * i, size=int(rng.integers(1, 40))) for i in range(200)]
    rm = RunningMoments()
    for i, b in enumerate(batches):
        if i == 120:  # checkpoint and resume into a fresh object
            state = rm.state_dict()
            rm = RunningMoments()
            rm.load_state_dict(state)
        rm.update(torch.tensor(b, dtype=torch.float32))
    seen = np.concatenate([b.astype(np.float32).astype(np.float64) for b in batches])
    assert rm.count == seen.size
    assert rm.mean == pytest.approx(seen.mean(), rel=1e-12)
    assert rm.var == pytest.approx(seen.var(), rel=1e-10)
    x = torch.tensor([0.5, 3.0, 10.0], dtype=torch.float64)
    np.testing.assert_allclose(rm.normalize(x).numpy(), (x.numpy() - seen.mean()) / (seen.std() + 1e-8), rtol=1e-10)
    scaled = RunningMoments(center=False)
    scaled.load_state_dict({**rm.state_dict(), "center": False})
    np.testing.assert_allclose(scaled.normalize(x).numpy(), x.numpy() / (seen.std() + 1e-8), rtol=1e-10)
    with pytest.raises(ValueError, match="center"):
        RunningMoments(center=True).load_state_dict(scaled.state_dict())
    with pytest.raises(FloatingPointError):
        rm.update(torch.tensor([float("nan")]))
