"""The unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on Code").

With ``n`` samples of which ``c`` pass, the probability that at least one of ``k`` samples drawn
without replacement passes is ``1 - C(n-c, k) / C(n, k)``. The binomials overflow floats for
realistic n, so the ratio is computed as the product ``prod_{i=n-c+1}^{n} (1 - k / i)``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["pass_at_k", "mean_pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct."""
    if not (0 <= c <= n) or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n} c={c} k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def mean_pass_at_k(samples: Sequence[int] | Iterable[int], correct: Sequence[int] | Iterable[int],
                   k: int) -> float:
    """pass@k averaged over problems (``samples[i]`` drawn, ``correct[i]`` passed, per problem)."""
    values = [pass_at_k(n, c, k) for n, c in zip(samples, correct, strict=True)]
    if not values:
        raise ValueError("no problems to average over")
    return float(np.mean(values))
