"""Class-balanced sampling: LVIS's repeat-factor sampling (Gupta et al., 2019; detectron2's
``RepeatFactorTrainingSampler``).

Images with rare classes are shown more often. With f_c the fraction of training images that
contain class c and a threshold t:

    r_c = max(1, sqrt(t / f_c)),    r_i = max over the classes c in image i of r_c   (1 without boxes)

Each epoch, image i comes floor(r_i) or ceil(r_i) times, r_i times on average (stochastic rounding,
as detectron2's sampler; drawn by systematic sampling, ``epoch_indices``, so the epoch's length is
fixed to round(sum r_i) without biasing the counts by more than one copy per epoch); the epoch's list
is shuffled, and every epoch has the same number of batches.

DDP: every rank draws the same list (seeded by ``seed + epoch``), pads it to a multiple of the world
size and takes its own stride of it, as ``DistributedSampler`` does, so every rank gets the same
number of images and batches. The rank, the world size and the epoch come from the index sampler
this batch sampler is given (a ``DistributedSampler``: the DataModule's, or the one Lightning
injects in its place under DDP); its order is not used. Batches are then aspect-ratio grouped
(``GroupedBatchSampler``) within the rank's share.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from frcnn.data.batching import GroupedBatchSampler

log = logging.getLogger(__name__)


def repeat_factors(labels_per_image: Sequence[Sequence[int] | np.ndarray], threshold: float) -> list[float]:
    """Labels (G_i,) of each image -> r_i per image (see the module docstring)."""
    if threshold <= 0:
        raise ValueError(f"the repeat-factor threshold must be > 0, got {threshold}")
    present = [set(int(label) for label in labels) for labels in labels_per_image]
    count = len(present)
    images_with: dict[int, int] = {}
    for classes in present:
        for c in classes:
            images_with[c] = images_with.get(c, 0) + 1
    class_factor = {c: max(1.0, math.sqrt(threshold / (n / count))) for c, n in images_with.items()}
    return [max((class_factor[c] for c in classes), default=1.0) for classes in present]


def epoch_indices(factors: Sequence[float], generator: torch.Generator) -> list[int]:
    """One epoch's shuffled image indices: index i floor(r_i) or ceil(r_i) times, r_i on average,
    round(sum r) in all.

    Systematic sampling: the images in a random order cover [0, R) with intervals of length r_i
    (R = sum r); points u, u + 1, u + 2, ... (u uniform in [0, 1)) each pick the image whose interval
    holds them. So image i gets r_i copies in expectation, floor or ceil; the total is floor(R) or
    ceil(R), and the length fix to round(R) moves at most one copy (none when R is a whole number).
    """
    r = torch.tensor(factors, dtype=torch.float64)
    order = torch.randperm(len(r), generator=generator)
    ends = torch.cumsum(r[order], dim=0)  # (N,) interval ends in the random order
    starts = ends - r[order]
    u = float(torch.rand(1, generator=generator, dtype=torch.float64))
    counts = (torch.ceil(ends - u) - torch.ceil(starts - u)).long()  # points u + m inside [start, end)
    indices = torch.repeat_interleave(order, counts)
    indices = indices[torch.randperm(len(indices), generator=generator)].tolist()
    length = int(round(float(r.sum())))
    return (indices + indices[:1])[:length]  # at most one copy added or dropped


class RepeatFactorBatchSampler(GroupedBatchSampler):
    """Aspect-ratio grouped batches of a repeat-factor epoch (module docstring), the rank's share.
    A ``GroupedBatchSampler`` whose epoch draws its indices by the repeat factors: the epoch's plan,
    the mid-epoch resume (``state_dict`` / ``load_state_dict``, ``frcnn.data.loader``) are its.

    Args:
        sampler: the rank's index sampler; only its ``num_replicas``, ``rank`` and ``epoch`` are read
            (a ``DistributedSampler``; any other sampler counts as one replica).
        group_ids: orientation group of each dataset index.
        factors: r_i of each dataset index (``repeat_factors``).
        batch_size: images per batch; drop_last: drop the rank's final incomplete batch.
        seed: the draw's seed (the same on every rank).
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], factors: Sequence[float], batch_size: int,
                 drop_last: bool = False, seed: int = 0) -> None:
        if len(group_ids) != len(factors):
            raise ValueError(f"{len(group_ids)} group ids for {len(factors)} repeat factors")
        super().__init__(sampler, group_ids, batch_size, drop_last)
        self.factors = [float(f) for f in factors]
        self.seed = int(seed)
        self.epoch = 0

    def _shard(self) -> tuple[int, int]:
        return int(getattr(self.sampler, "num_replicas", 1)), int(getattr(self.sampler, "rank", 0))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def rank_indices(self) -> list[int]:
        """This rank's image indices of the current epoch (the sampler's ``epoch`` if it has one)."""
        world, rank = self._shard()
        epoch = int(getattr(self.sampler, "epoch", self.epoch))
        indices = epoch_indices(self.factors, torch.Generator().manual_seed(self.seed + epoch))
        total = math.ceil(len(indices) / world) * world
        indices += indices[: total - len(indices)]  # pad to a multiple of the world size
        return indices[rank:total:world]

    def _draw(self) -> Iterator[list[int]]:
        """The epoch's batches: this rank's repeat-factor indices, grouped as ``GroupedBatchSampler`` groups."""
        yield from GroupedBatchSampler(self.rank_indices(), self.group_ids, self.batch_size, self.drop_last)._draw()

    def __len__(self) -> int:
        world, _ = self._shard()
        per_rank = math.ceil(int(round(sum(self.factors))) / world)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)


def repeat_factor_batches(dataset, group_ids: Sequence[int], threshold: float, batch_size: int, seed: int,
                          distributed: bool) -> RepeatFactorBatchSampler:
    """The DataModule's training batches with repeat-factor sampling over ``dataset.records``, logged once."""
    factors = repeat_factors([record.labels for record in dataset.records], threshold)
    shard = DistributedSampler(dataset, shuffle=False) if distributed else DistributedSampler(
        dataset, num_replicas=1, rank=0, shuffle=False)  # carries the epoch Lightning sets
    repeated = sum(f > 1.0 for f in factors)
    log.info("repeat-factor sampling (t=%g): %d of %d images repeated (r up to %.2f), %d images per epoch",
             threshold, repeated, len(factors), max(factors, default=1.0), int(round(sum(factors))))
    return RepeatFactorBatchSampler(shard, group_ids, factors, batch_size, seed=seed)
