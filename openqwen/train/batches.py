"""Row datasets and how rows become tensors.

A *row dataset* is anything with ``len(ds)`` and ``ds[i] -> dict[str, np.ndarray]`` of equal-shape
rows (``input_ids``, and optionally ``labels``, ``positions``, ``segment_ids``, or any field a task
reads, such as float ``advantages``). :func:`collate` stacks rows into a batch;
:class:`openqwen.train.sources.BatchStream` walks a row dataset in a recomputable order, and
:func:`eval_batches` takes the fixed validation batches.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from openqwen.data.packing import PackedDataset

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
    """Stack rows field by field. Floating fields (advantages, old log-probs, reward targets) keep
    their dtype; every other field (ids, labels, positions, segment ids) becomes int64, which
    embedding lookups and ``cross_entropy`` targets need."""
    batch = {}
    for key in rows[0]:
        stacked = np.stack([np.asarray(r[key]) for r in rows])
        if not np.issubdtype(stacked.dtype, np.floating):
            stacked = stacked.astype(np.int64)
        batch[key] = torch.from_numpy(stacked)
    return batch


def eval_batches(dataset: RowDataset, batch_size: int, max_batches: int, rank: int = 0,
                 world_size: int = 1) -> list[dict[str, torch.Tensor]]:
    """Fixed validation batches: the first rows in file order, split across ranks."""
    n = min(len(dataset), batch_size * max_batches * world_size)
    mine = list(range(rank, n, world_size))
    return [collate([dataset[i] for i in mine[k : k + batch_size]]) for k in range(0, len(mine), batch_size)]
