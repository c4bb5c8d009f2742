"""Turning datasets into micro-batches in an order that can be recomputed at any step.

A *row dataset* is anything with ``len(ds)`` and ``ds[i] -> dict[str, np.ndarray]`` of equal-length
rows (``input_ids``, and optionally ``labels``, ``positions``, ``segment_ids``). :class:`BatchStream`
walks it in the order of :func:`openqwen.data.packing.epoch_order`: micro-batch ``k`` of the whole
job (all ranks together) takes the global row slots ``[k*B*W, (k+1)*B*W)`` and rank ``r`` takes its
``B`` rows out of that. The only state is ``k``, so a resumed run (or a run with a different number
of ranks but the same global batch) sees exactly the same rows.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch

from openqwen.data.packing import PackedDataset, epoch_order

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (prompts, padding); the value cross_entropy ignores."""


class RowDataset(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, np.ndarray]: ...


class PackedRows:
    """Pretraining rows from packed shards: the next-token loss covers every real token.

    Positions of the padding at the very end of the corpus (``index.json`` ``num_tokens``) are
    labelled ``IGNORE_INDEX`` so padding never trains the model.
    """

    def __init__(self, path_or_ds: str | PackedDataset, start: int = 0, stop: int | None = None) -> None:
        self.ds = path_or_ds if isinstance(path_or_ds, PackedDataset) else PackedDataset(path_or_ds)
        self.start = start
        self.stop = len(self.ds) if stop is None else stop
        if not 0 <= self.start < self.stop <= len(self.ds):
            raise ValueError(f"row range [{start}, {stop}) is empty or outside the {len(self.ds)} packed sequences")
        self.seq_len = self.ds.seq_len

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        j = self.start + int(i)
        ids = self.ds[j]
        labels = ids.copy()
        first_pad = self.ds.num_tokens - j * self.seq_len  # flat offsets >= num_tokens are padding
        if first_pad < self.seq_len:
            labels[max(first_pad, 0):] = IGNORE_INDEX
        return {"input_ids": ids, "labels": labels}


def collate(rows: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    keys = rows[0].keys()
    return {k: torch.from_numpy(np.stack([r[k] for r in rows]).astype(np.int64)) for k in keys}


class BatchStream:
    """Endless micro-batches of ``batch_size`` rows for one rank, in a recomputable order."""

    def __init__(self, dataset: RowDataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if len(dataset) == 0:
            raise ValueError("the training data has no rows")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = 0  # micro-batches consumed by the whole job
        self._epoch, self._order = -1, np.empty(0, np.int64)

    def _row(self, slot: int) -> int:
        n = len(self.dataset)
        epoch = slot // n
        if epoch != self._epoch:
            self._epoch, self._order = epoch, epoch_order(n, epoch, self.seed)
        return int(self._order[slot % n])

    def next(self) -> dict[str, torch.Tensor]:
        base = self.position * self.batch_size * self.world_size + self.rank * self.batch_size
        self.position += 1
        return collate([self.dataset[self._row(base + j)] for j in range(self.batch_size)])

    @property
    def epoch(self) -> float:
        return self.position * self.batch_size * self.world_size / len(self.dataset)

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "batch_size": self.batch_size, "world_size": self.world_size,
                "seed": self.seed, "rows": len(self.dataset)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rows"] != len(self.dataset) or state["seed"] != self.seed:
            raise ValueError(
                f"the checkpoint was made on data with {state['rows']} rows and seed {state['seed']}, "
                f"this run has {len(self.dataset)} rows and seed {self.seed}: resume with the same data"
            )
        global_batch = state["batch_size"] * state["world_size"]
        if global_batch != self.batch_size * self.world_size:
            raise ValueError(f"the checkpoint used a global micro-batch of {global_batch} rows, this run "
                             f"{self.batch_size * self.world_size}: keep batch_size * world size the same")
        self.position = int(state["position"])


def eval_batches(dataset: RowDataset, batch_size: int, max_batches: int, rank: int = 0,
                 world_size: int = 1) -> list[dict[str, torch.Tensor]]:
    """Fixed validation batches: the first rows in file order, split across ranks."""
    n = min(len(dataset), batch_size * max_batches * world_size)
    mine = list(range(rank, n, world_size))
    return [collate([dataset[i] for i in mine[k : k + batch_size]]) for k in range(0, len(mine), batch_size)]
