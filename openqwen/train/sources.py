"""Where the loop's micro-batches come from: a :class:`BatchSource`.

The loop asks a source for one micro-batch at a time (``next()``) and stores the source's
``state_dict()`` in every checkpoint, so a resumed run draws exactly the batches the uninterrupted
run would have drawn. Two sources ship:

- :class:`BatchStream` walks a row dataset (packed pretraining rows, SFT rows) in the order of
  :func:`openqwen.data.packing.epoch_order`: micro-batch ``k`` of the whole job (all ranks together)
  takes the global row slots ``[k*B*W, (k+1)*B*W)`` and rank ``r`` takes its ``B`` rows out of that.
  The only state is ``k``, so a resumed run (or a run with a different number of ranks but the same
  global batch) sees exactly the same rows.
- :class:`GeneratedBatches` makes each batch on the fly by calling a function with a seeded
  ``torch.Generator`` (preference pairs drawn from a pool, PPO rollouts sampled through the engine
  from the model being trained). Its state is the generator's state and the number of batches
  made; each rank has its own stream.

Anything else with the same three members (and ``epoch``) works too.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from openqwen.data.packing import epoch_order

from .batches import RowDataset, collate


@runtime_checkable
class BatchSource(Protocol):
    """An endless supply of micro-batches for one rank that can save and restore its position."""

    def next(self) -> dict[str, torch.Tensor]:
        """The next micro-batch (tensors on the CPU; the loop moves them to the device)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here (saved in each checkpoint, per rank)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuse (``ValueError``) a state this source cannot continue."""

    @property
    def epoch(self) -> float | None:
        """Passes over the underlying data so far (logged), or None when there is no fixed data."""


class BatchStream:
    """Endless micro-batches of ``batch_size`` rows of a row dataset for one rank, in a recomputable order."""

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
        if state.get("rows") != len(self.dataset) or state.get("seed") != self.seed:
            raise ValueError(
                f"the checkpoint was made on data with {state.get('rows')} rows and seed {state.get('seed')}, "
                f"this run has {len(self.dataset)} rows and seed {self.seed}: resume with the same data"
            )
        global_batch = state["batch_size"] * state["world_size"]
        if global_batch != self.batch_size * self.world_size:
            raise ValueError(f"the checkpoint used a global micro-batch of {global_batch} rows, this run "
                             f"{self.batch_size * self.world_size}: keep batch_size * world size the same")
        self.position = int(state["position"])


def rank_seed(seed: int, rank: int) -> int:
    """A 63-bit seed of its own for each (seed, rank): ranks draw independent streams."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class GeneratedBatches:
    """Micro-batches made on the fly: ``make(generator)`` returns one batch (a dict of tensors).

    ``make`` must draw all of its randomness from the ``torch.Generator`` it is given (for rollouts:
    pass it to the sampler); anything else it reads (the model's weights, a fixed pool of prompts)
    is restored by the checkpoint already. Then the batches after a resume are the batches of the
    uninterrupted run. The generator is seeded from ``(seed, rank)``; ``rank=None`` takes the
    process's rank in the process group at the first batch (the Trainer joins the group), 0 alone.
    """

    def __init__(self, make: Callable[[torch.Generator], dict[str, torch.Tensor]], seed: int,
                 rank: int | None = None) -> None:
        self.make, self.seed, self._rank = make, seed, rank
        self._generator: torch.Generator | None = None
        self.batches = 0  # batches made by this rank

    @property
    def rank(self) -> int:
        if self._rank is None:
            import torch.distributed as dist

            self._rank = dist.get_rank() if dist.is_initialized() else 0
        return self._rank

    @property
    def generator(self) -> torch.Generator:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(rank_seed(self.seed, self.rank))
        return self._generator

    def next(self) -> dict[str, torch.Tensor]:
        batch = self.make(self.generator)
        self.batches += 1
        return batch

    @property
    def epoch(self) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "generated", "seed": self.seed, "rank": self.rank, "batches": self.batches,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "generated":
            raise ValueError("the checkpoint's batches came from a row dataset, this run generates them: "
                             "resume with the same batch source")
        if (state["seed"], state["rank"]) != (self.seed, self.rank):
            raise ValueError(f"the checkpoint holds the batch stream of seed {state['seed']} rank {state['rank']}, "
                             f"this process is seed {self.seed} rank {self.rank}: resume with the same seed "
                             f"and number of processes")
        self.generator.set_state(state["generator"])
        self.batches = int(state["batches"])
