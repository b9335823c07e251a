"""Class-balanced sampling: LVIS repeat factors by hand, the epoch's draw, DDP shards and Lightning's
sampler injection (the config reaching a training run: tests/app/test_recipe_runs.py)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from lightning.fabric.utilities.data import _replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, SequentialSampler

from frcnn.data import RepeatFactorBatchSampler, repeat_factors
from frcnn.data.repeat_factor import epoch_indices

# 16 images: classes 1 and 2 in images 0-3, class 3 alone in image 4, class 1 alone in 5-12, 13-15 empty.
# f_1 = 12/16, f_2 = 4/16, f_3 = 1/16; t = 0.5625: r_c = max(1, sqrt(t / f_c)) = 1, 1.5, 3; r_i = max over c.
LABELS = [[1, 2]] * 4 + [[3]] + [[1]] * 8 + [[]] * 3
T = 0.5625
FACTORS = [1.5] * 4 + [3.0] + [1.0] * 11
LENGTH = 20  # sum, a whole number: every epoch exactly the factors' sum


def test_repeat_factors_by_hand():
    assert repeat_factors(LABELS, T) == pytest.approx(FACTORS)
    assert repeat_factors(LABELS, 0.05) == [1.0] * 16  # every class frequent enough: no repeats
    with pytest.raises(ValueError, match="threshold must be > 0"):
        repeat_factors(LABELS, 0.0)


def test_each_epoch_has_the_same_length_and_the_factors_on_average():
    totals = Counter()
    epochs = 4000
    for epoch in range(epochs):
        indices = epoch_indices(FACTORS, torch.Generator().manual_seed(epoch))
        assert len(indices) == LENGTH
        counts = Counter(indices)
        assert all(math.floor(r) <= counts[i] <= math.ceil(r) for i, r in enumerate(FACTORS))
        totals.update(indices)
    # stochastic rounding: r_i on average (the means' standard error is below 0.01 here)
    assert [totals[i] / epochs for i in range(16)] == pytest.approx(FACTORS, abs=0.03)


def test_seeded_and_new_each_epoch():
    a = RepeatFactorBatchSampler(SequentialSampler(range(16)), [0] * 16, FACTORS, batch_size=2, seed=3)
    b = RepeatFactorBatchSampler(SequentialSampler(range(16)), [0] * 16, FACTORS, batch_size=2, seed=3)
    assert list(a) == list(b)
    first = list(a)
    lists = {tuple(map(tuple, first))}
    for epoch in range(1, 6):
        a.set_epoch(epoch)
        lists.add(tuple(map(tuple, a)))
    assert len(lists) > 1
    assert len(a) == len(first) == 10  # 20 / 2


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_ranks_share_one_draw_and_get_equal_batches(world):
    groups = [0, 1] * 8
    per_rank, counts = [], []
    for rank in range(world):
        shard = DistributedSampler(range(16), num_replicas=world, rank=rank, shuffle=False)
        shard.set_epoch(4)
        sampler = RepeatFactorBatchSampler(shard, groups, FACTORS, batch_size=2, seed=7)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        counts.append(len(batches))
        per_rank.append(sorted(i for batch in batches for i in batch))
    assert len(set(counts)) == 1
    drawn = epoch_indices(FACTORS, torch.Generator().manual_seed(7 + 4))
    padded = drawn + drawn[: math.ceil(len(drawn) / world) * world - len(drawn)]
    assert sorted(i for shard in per_rank for i in shard) == sorted(padded)  # the one list, split


def test_lightning_injects_the_rank_and_keeps_the_draw():
    dataset = list(range(16))
    with _replace_dunder_methods(BatchSampler):  # what the Trainer does around the dataloader hooks
        single = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
        loader = DataLoader(dataset, batch_sampler=RepeatFactorBatchSampler(single, [0] * 16, FACTORS, 2, seed=1),
                            collate_fn=list)
    rank1 = _update_dataloader(loader, DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=99))
    assert isinstance(rank1.batch_sampler, RepeatFactorBatchSampler)
    expected = epoch_indices(FACTORS, torch.Generator().manual_seed(1))  # 20: a multiple of 2
    assert [i for batch in rank1 for i in batch] == expected[1::2]


def test_a_saved_repeat_factor_epoch_resumes_with_the_same_batches():
    """The sampler is a GroupedBatchSampler: mid-epoch resume (frcnn.data.loader) keeps the drawn epoch."""
    sampler = RepeatFactorBatchSampler(SequentialSampler(range(16)), [0, 1] * 8, FACTORS, batch_size=2, seed=5)
    iterator = iter(sampler)
    taken = [next(iterator) for _ in range(4)]
    plan = sampler.plan
    assert taken == plan[:4] and len(plan) == len(sampler) == 10
    assert sorted(i for batch in plan for i in batch) == sorted(epoch_indices(FACTORS, torch.Generator().manual_seed(5)))
    resumed = RepeatFactorBatchSampler(SequentialSampler(range(16)), [0, 1] * 8, FACTORS, batch_size=2, seed=5)
    resumed.load_state_dict(sampler.state_dict(position=4))
    assert list(resumed) == plan[4:]
