import torch
from torch.testing import assert_close

from frcnn.modeling.sampling import subsample_labels


def _labels(num_fg, num_bg, num_ignored):
    return torch.tensor([1] * num_fg + [0] * num_bg + [-1] * num_ignored, dtype=torch.int8)


def _counts(labels, sampled):
    return int((sampled & (labels == 1)).sum()), int((sampled & (labels == 0)).sum())


def test_quota_and_fill_with_background():
    labels = torch.stack([_labels(300, 600, 100), _labels(10, 500, 490), _labels(0, 50, 950)])
    sampled = subsample_labels(labels, 256, 0.5, torch.Generator().manual_seed(0))
    assert _counts(labels[0], sampled[0]) == (128, 128)
    assert _counts(labels[1], sampled[1]) == (10, 246)  # fewer fg than the quota: bg fills in
    assert _counts(labels[2], sampled[2]) == (0, 50)
    assert not (sampled & (labels == -1)).any()


def test_rcnn_fraction():
    labels = _labels(40, 200, 0)[None]
    sampled = subsample_labels(labels, 64, 0.25, torch.Generator().manual_seed(1))
    assert _counts(labels[0], sampled[0]) == (16, 48)


def test_reproducible_with_seed_and_random_otherwise():
    labels = _labels(100, 1000, 0)[None].repeat(2, 1)
    a = subsample_labels(labels, 64, 0.25, torch.Generator().manual_seed(7))
    b = subsample_labels(labels, 64, 0.25, torch.Generator().manual_seed(7))
    c = subsample_labels(labels, 64, 0.25, torch.Generator().manual_seed(8))
    assert_close(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each image draws its own sample


def test_uniform_over_candidates():
    labels = _labels(20, 0, 0)[None]
    g = torch.Generator().manual_seed(0)
    hits = sum(subsample_labels(labels, 10, 0.5, g)[0].float() for _ in range(2000))
    # each of 20 candidates is taken 5 times out of 20 -> 2000 * 5 / 20 = 500 expected
    assert (hits - 500).abs().max() < 90


def test_empty():
    assert subsample_labels(torch.zeros(2, 0, dtype=torch.int8), 8, 0.5).shape == (2, 0)
