"""Aspect-ratio grouped batches: homogeneous, complete, and equal in number on every DDP rank."""

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from frcnn.data import GroupedBatchSampler, orientation_groups


def test_orientation_groups():
    assert orientation_groups([1.5, 1.0, 0.75]) == [0, 0, 1]


def test_full_batches_share_a_group_and_every_index_comes_once():
    groups = [0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0]
    batches = list(GroupedBatchSampler(SequentialSampler(range(11)), groups, batch_size=3))
    # a batch leaves when its group fills: group 1 at index 4, group 0 at 5, group 1 at 9; then the rest
    assert batches == [[1, 2, 4], [0, 3, 5], [7, 8, 9], [6, 10]]
    assert len(GroupedBatchSampler(SequentialSampler(range(11)), groups, batch_size=3)) == 4
    dropped = list(GroupedBatchSampler(SequentialSampler(range(11)), groups, batch_size=3, drop_last=True))
    assert dropped == [[1, 2, 4], [0, 3, 5], [7, 8, 9]]


@pytest.mark.parametrize("batch_size, drop_last", [(2, False), (4, False), (4, True)])
def test_every_rank_gets_the_same_number_of_batches(batch_size, drop_last):
    # 23 images, very unbalanced groups: leftovers differ per rank, the batch count must not.
    groups = [0] * 17 + [1] * 6
    counts, seen = [], []
    for rank in range(3):
        sampler = DistributedSampler(range(23), num_replicas=3, rank=rank, shuffle=True, seed=5)
        batch_sampler = GroupedBatchSampler(sampler, groups, batch_size, drop_last=drop_last)
        batches = list(batch_sampler)
        assert len(batches) == len(batch_sampler)
        counts.append(len(batches))
        seen += [i for b in batches for i in b]
    assert len(set(counts)) == 1
    if not drop_last:
        assert set(seen) == set(range(23))  # DistributedSampler pads 23 -> 24 with a repeat


def test_lightning_can_inject_its_distributed_sampler():
    dataset = list(range(10))
    with _replace_dunder_methods(BatchSampler):  # what the Trainer does around the dataloader hooks
        batch_sampler = GroupedBatchSampler(SequentialSampler(dataset), [0, 1] * 5, batch_size=2)
        loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=list)
    rank1 = _update_dataloader(loader, DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False))
    assert isinstance(rank1.batch_sampler, GroupedBatchSampler)
    # rank 1 of 2 draws indices 1, 3, 5, 7, 9: all odd, all group 1
    assert list(rank1) == [[1, 3], [5, 7], [9]]
    assert torch.tensor(len(rank1)) == 3
