"""The unbiased pass@k estimator against the closed form with exact binomials."""

from __future__ import annotations

import math
import random

import pytest

from openqwen.eval.passk import mean_pass_at_k, pass_at_k


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_matches_closed_form_on_random_cases():
    rng = random.Random(0)
    for _ in range(2000):
        n = rng.randint(1, 200)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), rel=1e-9, abs=1e-12)


def test_edge_cases():
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 10, 5) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(1, 1, 1) == 1.0
    # large n, where math.comb-as-float would overflow: still finite and in [0, 1]
    assert 0.0 < pass_at_k(5000, 3, 100) < 1.0


def test_mean_and_bad_input():
    assert mean_pass_at_k([10, 10], [0, 10], 1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(3, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
