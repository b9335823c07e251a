"""The training DataLoader, resumable mid-epoch: a checkpoint holds where in the epoch training was.

Lightning saves ``state_dict()`` of every train loader that has one into the checkpoint and calls
``load_state_dict`` when resuming, before the epoch's iteration starts. The position is counted
here, at the loader, as the batches handed to the training loop: the batch sampler runs ahead of
training whenever loader workers prefetch. The batches themselves come from the grouped batch
sampler's plan (``frcnn.data.batching``), so the steps after a resume see the same batches as an
uninterrupted run would have.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader

from frcnn.data.batching import GroupedBatchSampler


class _Counting(Iterator):
    """Wraps a loader's iterator; counts the batches it hands out into ``loader.delivered``."""

    def __init__(self, iterator: Iterator, loader: ResumableDataLoader) -> None:
        self.iterator = iterator
        self.loader = loader

    def __next__(self) -> Any:
        batch = next(self.iterator)
        self.loader.delivered += 1
        return batch

    def __len__(self) -> int:
        return len(self.iterator)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over a ``GroupedBatchSampler`` whose epoch position survives a checkpoint.

    ``delivered``: batches of the current epoch handed to the training loop so far. ``rewind()``
    takes one back (the training step of the last one failed, so it was not trained on).
    """

    delivered = 0
    _start = 0  # where the next iteration starts counting: the resumed position

    def __iter__(self) -> Iterator:
        self.delivered, self._start = self._start, 0
        return _Counting(super().__iter__(), self)

    def rewind(self) -> None:
        self.delivered = max(0, self.delivered - 1)

    def state_dict(self) -> dict:
        if not isinstance(self.batch_sampler, GroupedBatchSampler):
            return {}
        world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        return {"batch_sampler": self.batch_sampler.state_dict(self.delivered, world_size)}

    def load_state_dict(self, state: dict) -> None:
        if isinstance(self.batch_sampler, GroupedBatchSampler) and "batch_sampler" in state:
            self.batch_sampler.load_state_dict(state["batch_sampler"])
            self._start = self.batch_sampler.resume_position
