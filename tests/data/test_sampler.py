"""Aspect-ratio grouped batches: homogeneous, complete, and equal in number on every DDP rank; an
epoch saved mid-way resumes with the same batches."""

import io

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


def test_a_saved_epoch_resumes_with_the_same_batches():
    from torch.utils.data import RandomSampler

    groups = [0, 1] * 6 + [0] * 3
    sampler = GroupedBatchSampler(RandomSampler(range(15)), groups, batch_size=2)
    iterator = iter(sampler)
    taken = [next(iterator) for _ in range(3)]
    plan = sampler.plan
    assert taken == plan[:3] and len(plan) == len(sampler) == 8
    state = sampler.state_dict(position=3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = GroupedBatchSampler(RandomSampler(range(15)), groups, batch_size=2)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))  # checkpoints load with weights_only
    assert resumed.resume_position == 3
    assert list(resumed) == plan[3:]  # the rest of the saved epoch...
    assert len(list(resumed)) == 8 and resumed.resume_position == 0  # ...then whole new epochs
    finished = GroupedBatchSampler(RandomSampler(range(15)), groups, batch_size=2)
    finished.load_state_dict(sampler.state_dict(position=8))  # saved at the epoch's end: a fresh epoch
    assert len(list(finished)) == 8


def test_a_state_for_other_data_is_ignored(caplog):
    groups = [0] * 10
    state = GroupedBatchSampler(SequentialSampler(range(10)), groups, batch_size=2)
    list(state)
    other = GroupedBatchSampler(SequentialSampler(range(10)), groups, batch_size=4)
    other.load_state_dict(state.state_dict(position=2))
    assert "the interrupted epoch restarts with a new order" in caplog.text
    assert list(other) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_a_ddp_state_redraws_each_ranks_epoch_and_skips_what_was_trained():
    groups = [0, 1] * 10
    plans = []
    for rank in range(2):
        sampler = DistributedSampler(range(20), num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(4)
        plans.append(list(GroupedBatchSampler(sampler, groups, batch_size=2)))
    state = GroupedBatchSampler(SequentialSampler(range(20)), groups, 2).state_dict(position=2, world_size=2)
    assert "indices" not in state  # rank 0's plan would be wrong for rank 1
    for rank in range(2):
        sampler = DistributedSampler(range(20), num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(4)  # Lightning sets the resumed epoch
        resumed = GroupedBatchSampler(sampler, groups, batch_size=2)
        resumed.load_state_dict(state)
        assert list(resumed) == plans[rank][2:]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_the_loader_counts_the_batches_it_handed_out(num_workers):
    from torch.utils.data import RandomSampler

    from frcnn.data.loader import ResumableDataLoader

    def loader():
        sampler = GroupedBatchSampler(RandomSampler(range(12)), [0, 1] * 6, batch_size=2)
        return ResumableDataLoader(list(range(12)), batch_sampler=sampler, collate_fn=list, num_workers=num_workers)

    first = loader()
    iterator = iter(first)
    seen = [next(iterator) for _ in range(2)]  # workers have prefetched more than these
    assert first.delivered == 2
    state = first.state_dict()
    rest = list(iterator)
    second = loader()
    second.load_state_dict(state)
    assert list(second) == rest and len(seen + rest) == 6
    assert second.delivered == 6
