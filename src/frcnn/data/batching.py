"""Aspect-ratio grouped batches: landscape images batch with landscape ones, portrait with portrait.

The model pads every batch to its largest image; mixing a 1000x600 and a 600x1000 image pads both to
1000x1000, wasting about 40 % of the compute. Grouping avoids that.

DDP: the sampler only groups. Sharding is the job of the index sampler it wraps, which is a
``DistributedSampler`` under DDP (the DataModule passes one, and Lightning injects its own through
the ``sampler`` argument). That sampler gives every rank the same number of indices, and this one
turns n indices into exactly ``ceil(n / batch_size)`` batches (``floor`` with ``drop_last``) whatever
their aspect ratios, so every rank runs the same number of steps and no rank waits in an all-reduce.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import BatchSampler, Sampler


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

    def __iter__(self) -> Iterator[list[int]]:
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


def orientation_groups(aspect_ratios: Sequence[float]) -> list[int]:
    """width / height per image -> group 0 (landscape or square) or 1 (portrait)."""
    return [0 if ratio >= 1.0 else 1 for ratio in aspect_ratios]
