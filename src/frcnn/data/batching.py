"""Aspect-ratio grouped batches: landscape images batch with landscape ones, portrait with portrait.

The model pads every batch to its largest image; mixing a 1000x600 and a 600x1000 image pads both to
1000x1000, wasting about 40 % of the compute. Grouping avoids that.

DDP: the sampler only groups. Sharding is the job of the index sampler it wraps, which is a
``DistributedSampler`` under DDP (the DataModule passes one, and Lightning injects its own through
the ``sampler`` argument). That sampler gives every rank the same number of indices, and this one
turns n indices into exactly ``ceil(n / batch_size)`` batches (``floor`` with ``drop_last``) whatever
their aspect ratios, so every rank runs the same number of steps and no rank waits in an all-reduce.

Resuming mid-epoch: every epoch's batches are drawn in full when its iteration starts (the epoch's
*plan*), so a checkpoint can hold the plan and the number of batches already trained
(``state_dict(position)``, from ``frcnn.data.loader.ResumableDataLoader``); after
``load_state_dict`` the next iteration yields the rest of that plan, then epochs go on as usual.
Under DDP only rank 0's checkpoint is written, so a multi-process state keeps the position alone:
each rank redraws its own plan from its ``DistributedSampler`` (seeded by seed and epoch, so the
same as before) and skips the batches already trained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, Sampler

log = logging.getLogger(__name__)


class GroupedBatchSampler(BatchSampler):
    """Batches of indices whose images share an orientation group.

    Args:
        sampler: yields dataset indices (random, or the rank's shard under DDP).
        group_ids: group of each dataset index (e.g. 0 for width >= height, 1 otherwise).
        batch_size: images per batch.
        drop_last: drop the final incomplete batch.

    Full batches of one group are yielded as soon as they fill, in the order the sampler drew their
    last index; the incomplete remainders of all groups are then merged into mixed batches.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int,
                 drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.plan: list[list[int]] = []  # the batches of the epoch being iterated
        self._resume: tuple[list[list[int]] | None, int] | None = None  # (plan or None: redraw, batches to skip)

    def __iter__(self) -> Iterator[list[int]]:
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] is not None:
            plan, start = resume
        else:
            plan, start = list(self._draw()), resume[1] if resume is not None else 0
        self.plan = plan
        yield from plan[start:]

    def _draw(self) -> Iterator[list[int]]:
        buckets: dict[int, list[int]] = {}
        for index in self.sampler:
            bucket = buckets.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                buckets[self.group_ids[index]] = []
        leftovers = [index for bucket in buckets.values() for index in bucket]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start:start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        count = len(self.sampler)
        if self.drop_last:
            return count // self.batch_size
        return (count + self.batch_size - 1) // self.batch_size

    @property
    def resume_position(self) -> int:
        """Batches of the epoch the next iteration skips (0 unless resuming)."""
        return self._resume[1] if self._resume is not None else 0

    def state_dict(self, position: int, world_size: int = 1) -> dict:
        """The current epoch's plan and ``position``, the number of its batches already trained.

        The plan is flat int64 tensors (indices, batch sizes): checkpoints load with
        ``weights_only=True``. ``world_size`` > 1 keeps the position only (see the module docstring).
        """
        state = {"position": int(position), "world_size": int(world_size), "batch_size": self.batch_size,
                 "num_indices": len(self.group_ids)}
        if world_size == 1:
            state["indices"] = torch.tensor([i for batch in self.plan for i in batch], dtype=torch.int64)
            state["sizes"] = torch.tensor([len(batch) for batch in self.plan], dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Make the next iteration resume the saved epoch at its saved position (once).

        A state of another dataset size or batch size, or a finished epoch, is ignored: the next epoch
        starts afresh (with a warning for a mismatch, since the data changed since the checkpoint).
        """
        if (state.get("num_indices"), state.get("batch_size")) != (len(self.group_ids), self.batch_size):
            log.warning("the checkpoint's batches are for %s images in batches of %s, this data has %d in batches "
                        "of %d: the interrupted epoch restarts with a new order", state.get("num_indices"),
                        state.get("batch_size"), len(self.group_ids), self.batch_size)
            return
        position = int(state["position"])
        if "indices" not in state:  # a DDP state: redraw this rank's plan, skip what was trained
            if position < len(self):
                self._resume = (None, position)
            return
        sizes = state["sizes"].tolist()
        if position >= len(sizes):
            return
        plan = [batch.tolist() for batch in state["indices"].split(sizes)] if sizes else []
        self._resume = (plan, position)


def orientation_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """width / height per image -> group 0 (landscape or square) or 1 (portrait)."""
    return [0 if ratio >= 1.0 else 1 for ratio in aspect_ratios]
