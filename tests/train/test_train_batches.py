"""collate: float fields stay floats (advantages, old log-probs), ids become int64."""

from __future__ import annotations

import numpy as np
import torch

from openqwen.train.batches import collate


def test_collate_keeps_float_fields_as_floats():
    rows = [{"input_ids": np.array([1, 2, 3], np.int32), "advantages": np.array([0.5, -1.25, 2.0], np.float32),
             "old_logprobs": np.array([-0.1, -2.3, -0.7]), "reward": np.float32(0.75 * i)} for i in range(2)]
    batch = collate(rows)
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].tolist() == [[1, 2, 3]] * 2
    assert batch["advantages"].dtype == torch.float32 and batch["advantages"][0].tolist() == [0.5, -1.25, 2.0]
    assert batch["old_logprobs"].dtype == torch.float64
    assert batch["old_logprobs"][1].tolist() == [-0.1, -2.3, -0.7]
    assert batch["reward"].dtype == torch.float32 and batch["reward"].tolist() == [0.0, 0.75]
