"""``nms_top_k``: the first k survivors of greedy NMS per group, against torchvision's
``batched_nms`` over everything, cut to the k best of each group."""

import pytest
import torch
from torchvision.ops import batched_nms

from frcnn.modeling import nms as nms_module
from frcnn.modeling.batched import top_k_per_group
from frcnn.modeling.nms import nms_top_k


def clustered_boxes(n: int, groups: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n boxes around 20 centres (most overlap some other box), distinct scores, random groups."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(20, 2, generator=g) * 200
    xy = centres[torch.randint(0, 20, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 8
    wh = 10 + torch.rand(n, 2, generator=g) * 40
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    return boxes, torch.randperm(n, generator=g).float(), torch.randint(0, groups, (n,), generator=g)


def reference(boxes, scores, groups, threshold, k):
    keep = batched_nms(boxes, scores, groups, threshold)
    return keep[top_k_per_group(scores[keep], groups[keep], k)]


@pytest.mark.parametrize("k", [1, 5, 40, 3000])
@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_equals_batched_nms_cut_to_k(k, threshold):
    boxes, scores, groups = clustered_boxes(2500, groups=4, seed=k)
    ours = nms_top_k(boxes, scores, groups, threshold, k)
    expected = reference(boxes, scores, groups, threshold, k)
    assert torch.equal(ours, expected)
    per_group = torch.bincount(groups[ours], minlength=4)
    full = torch.bincount(groups[batched_nms(boxes, scores, groups, threshold)], minlength=4)
    assert torch.equal(per_group, full.clamp(max=k))  # k of each group, or all it keeps


def test_grows_the_prefix_when_the_first_try_keeps_too_few(monkeypatch):
    """50 identical boxes, then 2 apart, k = 3: the first slice (3 k = 9 boxes) keeps 1; the next
    round runs NMS over that survivor and boxes 9 .. 72 (max(9 + 64, 9 * 3 / 1 * 1.25)), capped at
    the 52 there are."""
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(50, 1)
    apart = torch.tensor([[100.0, 100.0, 110.0, 110.0], [200.0, 200.0, 210.0, 210.0]])
    boxes = torch.cat([same, apart])
    scores = torch.arange(52, 0, -1).float()  # the distinct boxes rank last
    groups = torch.zeros(52, dtype=torch.int64)
    calls = []
    real = nms_module.nms
    monkeypatch.setattr(nms_module, "nms", lambda b, s, t: calls.append(b.shape[0]) or real(b, s, t))
    kept = nms_top_k(boxes, scores, groups, 0.5, k=3)
    assert kept.tolist() == [0, 50, 51]
    assert calls == [9, 1 + 43]
    calls.clear()
    assert nms_top_k(boxes, scores, groups, 0.5, k=9).tolist() == [0, 50, 51]
    assert calls == [52]  # 3 k is half the group or more: all of it at once


def test_many_rounds_give_the_same_boxes(monkeypatch):
    """A first slice of 1 box and no margin: many rounds per group."""
    monkeypatch.setattr(nms_module, "FIRST_TRY", 0.01)
    monkeypatch.setattr(nms_module, "GROWTH", 1.0)
    calls = []
    real = nms_module.nms
    monkeypatch.setattr(nms_module, "nms", lambda b, s, t: calls.append(b.shape[0]) or real(b, s, t))
    boxes, scores, groups = clustered_boxes(3000, groups=2, seed=3)
    ours = nms_top_k(boxes, scores, groups, 0.5, 100)
    assert torch.equal(ours, reference(boxes, scores, groups, 0.5, 100))
    assert len(calls) > 4


def test_ties_rank_in_input_order():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 11, 11], [50.0, 50, 60, 60], [0.0, 0, 10, 10]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    groups = torch.zeros(4, dtype=torch.int64)
    # 3 ranks first; 0 and 1 overlap it (IoU 1 and 0.68), 2 survives
    assert nms_top_k(boxes, scores, groups, 0.5, k=5).tolist() == [3, 2]
    assert nms_top_k(boxes, scores, groups, 0.9, k=5).tolist() == [3, 1, 2]  # 1 (IoU 0.68) stays


def test_empty_and_zero_k():
    boxes, scores, groups = clustered_boxes(10, groups=2, seed=0)
    assert nms_top_k(boxes[:0], scores[:0], groups[:0], 0.5, 10).tolist() == []
    assert nms_top_k(boxes, scores, groups, 0.5, 0).tolist() == []
    # a group number with no boxes (3 here) is skipped
    kept = nms_top_k(boxes, scores, groups * 3, 0.5, 10)
    assert torch.equal(kept, reference(boxes, scores, groups * 3, 0.5, 10))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_pool_keeps_the_serial_result_and_order(monkeypatch, threads):
    """The pool path (forced on for every size) returns the serial path's indices, group by group,
    for 1 torch thread (no pool), 2, and 3 (a pool rebuilt for the new worker count)."""
    boxes, scores, groups = clustered_boxes(4000, groups=10, seed=7)
    monkeypatch.setattr(nms_module, "THREADED_MIN_BOXES", 10**9)
    serial = nms_top_k(boxes, scores, groups, 0.7, 50)
    calls = []
    real_map = nms_module._map_groups
    monkeypatch.setattr(nms_module, "_map_groups", lambda fn, gs, t: calls.append(t) or real_map(fn, gs, t))
    monkeypatch.setattr(nms_module, "THREADED_MIN_BOXES", 0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pooled = nms_top_k(boxes, scores, groups, 0.7, 50)
        workers = nms_module._pool[1] if nms_module._pool is not None else None
    finally:
        torch.set_num_threads(before)
    assert calls == [True]
    assert torch.equal(pooled, serial)
    assert torch.equal(pooled, reference(boxes, scores, groups, 0.7, 50))
    if threads > 1:
        assert workers == threads


def test_map_groups_runs_in_order_on_pool_threads():
    import threading

    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        names = []
        out = nms_module._map_groups(
            lambda g: names.append(threading.current_thread().name) or g * 2, [torch.tensor([i]) for i in range(6)], True
        )
    finally:
        torch.set_num_threads(torch_threads)
    assert [t.item() for t in out] == [0, 2, 4, 6, 8, 10]
    assert all(name.startswith("frcnn-nms") for name in names)
    assert nms_module._map_groups(lambda g: g, [torch.tensor([1])], True)[0].item() == 1  # one group: inline
