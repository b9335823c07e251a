import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import roi_align as tv_roi_align

import frcnn.layers.roi_align_backward as roi_align_backward
from frcnn.layers.roi_align import crop_and_resize, roi_align
from frcnn.modeling.roi_heads.poolers import RoIPooler


def _x_squared_map():
    x = torch.arange(5.0)
    return (x**2).expand(5, 5).reshape(1, 1, 5, 5).clone()  # f[y, x] = x^2


def test_crop_and_resize_hand_computed_bilinear():
    f = _x_squared_map()
    rois = torch.tensor([[0.0, 0.5, 1.0, 2.5, 3.0]])  # (batch, x1, y1, x2, y2) in index coords
    out = crop_and_resize(f, rois, 3)
    # samples at x = 0.5, 1.5, 2.5: (0 + 1) / 2, (1 + 4) / 2, (4 + 9) / 2
    assert_close(out[0, 0], torch.tensor([[0.5, 2.5, 6.5]]).expand(3, 3))


def test_crop_and_resize_corners_on_box_corners_and_edge_clamp():
    f = torch.arange(25.0).reshape(1, 1, 5, 5)  # f[y, x] = 5 y + x
    out = crop_and_resize(f, torch.tensor([[0.0, 1.0, 0.0, 4.0, 2.0]]), 4)
    expected = torch.tensor([[5 * y + x for x in (1.0, 2.0, 3.0, 4.0)] for y in (0.0, 2 / 3, 4 / 3, 2.0)])
    assert_close(out[0, 0], expected)
    beyond = crop_and_resize(f, torch.tensor([[0.0, 3.0, 0.0, 4.6, 0.0]]), 2)  # x = 4.6: within a cell
    assert_close(beyond[0, 0, 0], torch.tensor([3.0, 4.0]))  # of the edge -> the edge value
    far = crop_and_resize(f, torch.tensor([[0.0, 3.0, 0.0, 5.5, 0.0]]), 2)  # x = 5.5 > W: zero
    assert_close(far[0, 0, 0], torch.tensor([3.0, 0.0]))


def test_pooler_crop_and_resize_is_14_then_max_pool():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 3, 8, 8, generator=g)
    boxes = [torch.tensor([[8.0, 16.0, 96.0, 80.0]]), torch.tensor([[0.0, 0.0, 128.0, 128.0], [30.0, 40.0, 50.0, 70.0]])]
    out = RoIPooler("crop_and_resize", 7)(f, boxes, stride=16)
    assert out.shape == (3, 3, 7, 7)
    index = torch.tensor([[0, 8 / 16 - 0.5, 16 / 16 - 0.5, 96 / 16 - 0.5, 80 / 16 - 0.5]])
    crop = crop_and_resize(f, index, 14)
    assert_close(out[0], crop[0].reshape(3, 7, 2, 7, 2).amax(dim=(2, 4)))


def test_pooler_roi_align_matches_torchvision():
    f = torch.randn(1, 4, 10, 10, generator=torch.Generator().manual_seed(1))
    boxes = [torch.tensor([[3.0, 5.0, 77.0, 60.0]])]
    out = RoIPooler("roi_align", 7, sampling_ratio=2)(f, boxes, stride=8)
    ref = tv_roi_align(f, [boxes[0]], (7, 7), spatial_scale=1 / 8, sampling_ratio=2, aligned=True)
    assert_close(out, ref)


def _random_rois(g: torch.Generator, n: int = 40) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * 200 - 20  # some RoIs start outside the map
    wh = torch.rand(n, 2, generator=g) * 120 + 0.5
    return torch.cat((torch.randint(0, 2, (n, 1), generator=g).float(), xy, xy + wh), dim=1)


# "torchvision" is the kernel CUDA picks: run here on CPU tensors, with our separable backward
@pytest.mark.parametrize("kernel", ["sparse", "torchvision"])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 3])
def test_roi_align_equals_torchvision_in_value_and_gradient(aligned, sampling_ratio, kernel):
    g = torch.Generator().manual_seed(sampling_ratio)
    features = torch.randn(2, 5, 9, 12, generator=g, requires_grad=True)
    rois = _random_rois(g)
    ours = roi_align(features, rois, 7, 1 / 16, sampling_ratio, aligned, kernel=kernel)
    theirs = tv_roi_align(features, rois, (7, 7), 1 / 16, sampling_ratio, aligned)
    assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    weights = torch.randn(ours.shape, generator=g)
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), features)
    assert_close(grad_ours, grad_theirs, atol=1e-4, rtol=1e-5)



@pytest.mark.parametrize(("budget", "overhead"), [(1, 0), (2**12, 2**18), (2**30, 2**40)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_roi_align_backward_by_windows_equals_torchvision(budget, overhead, layout, monkeypatch):
    """The backward works per chunk of RoIs on the window they span (``separable_backward``):
    with one RoI per chunk, a few, or all of an image's in one, from an output gradient in either
    layout, the gradient is torchvision's, including RoIs partly or wholly outside the map, a map
    with no RoIs (zero gradient) and unsorted RoIs of both images interleaved."""
    monkeypatch.setitem(roi_align_backward._CHUNK_OVERHEAD_BYTES, "cpu", overhead)
    monkeypatch.setitem(roi_align_backward._BACKWARD_CHUNK_BYTES, "cpu", budget)
    g = torch.Generator().manual_seed(5)
    features = torch.randn(3, 4, 20, 23, generator=g).contiguous(memory_format=layout).requires_grad_()
    rois = _random_rois(g, 60) * torch.tensor([1.0, 2, 2, 2, 2])  # images 0 and 1 only: 2 gets none
    outside = torch.tensor([[1.0, 900, 900, 950, 990], [0, -300, -200, -250, -150]])  # no sample inside
    rois = torch.cat((rois, outside))
    ours = roi_align(features, rois, 7, 1 / 16, 2, False)
    theirs = tv_roi_align(features, rois, (7, 7), 1 / 16, 2, False)
    weights = torch.randn(ours.shape, generator=g).contiguous(memory_format=layout)  # the output gradient's layout
    (grad_ours,) = torch.autograd.grad((ours * weights).sum(), features)
    (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), features)
    assert_close(grad_ours, grad_theirs, atol=1e-4, rtol=1e-5)
    assert grad_ours[2].abs().max() == 0
    assert grad_ours.is_contiguous(memory_format=layout)


def test_group_rois_shares_windows_of_overlapping_rois_only():
    """Hand-computed chunks (S = 2, costs in map cells: n * S * Wc + 2 * Hc * Wc + overhead)."""
    group = roi_align_backward.group_rois
    same = [[0, 2, 0, 2], [0, 2, 0, 2]]  # one window: 2*2*2 + 2*2*2 = 16 against 2 * (4 + 8) = 24
    assert list(group(same, 2, budget=100, overhead=0)) == [(0, 2, (0, 2, 0, 2))]
    apart = [[0, 2, 0, 2], [0, 2, 10, 12]]  # one window (0, 2, 0, 12): 48 + 48 = 96 against 24
    assert list(group(apart, 2, budget=100, overhead=0)) == [(0, 1, (0, 2, 0, 2)), (1, 2, (0, 2, 10, 12))]
    # a fixed cost per chunk of 80 cells makes one window cheaper: 96 + 80 against 24 + 160
    assert list(group(apart, 2, budget=100, overhead=80)) == [(0, 2, (0, 2, 0, 12))]
    # ... unless its rows (2 RoIs * S * 12 = 48 cells) are over the budget
    assert list(group(apart, 2, budget=47, overhead=80)) == [(0, 1, (0, 2, 0, 2)), (1, 2, (0, 2, 10, 12))]
    # a RoI with no weight inside the map (an empty span) is left out and ends the chunk before it
    outside = [[0, 2, 0, 2], [5, 5, 0, 3], [0, 2, 0, 2], [1, 3, 2, 2]]
    assert list(group(outside, 2, budget=100, overhead=0)) == [(0, 1, (0, 2, 0, 2)), (2, 3, (0, 2, 0, 2))]

@pytest.mark.parametrize("kernel", ["sparse", "torchvision"])
def test_roi_align_in_bfloat16_samples_in_float32(kernel):
    """bfloat16 features (autocast): both kernels sample in float32 and round once, so the value is
    float32 RoIAlign of the same features within bfloat16's rounding (2^-9 relative, with float32
    sums in either order), and the gradient comes back in bfloat16."""
    g = torch.Generator().manual_seed(7)
    features = torch.randn(2, 5, 9, 12, generator=g).bfloat16().requires_grad_()
    rois = _random_rois(g)
    out = roi_align(features, rois, 7, 1 / 16, 2, True, kernel=kernel)
    reference = tv_roi_align(features.detach().float(), rois, (7, 7), 1 / 16, 2, True)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), reference, atol=1e-5, rtol=2**-8)  # float32 sums in another order: a tie may round up
    (grad,) = torch.autograd.grad(out.float().sum(), features)
    full = features.detach().float().requires_grad_()
    (grad_reference,) = torch.autograd.grad(tv_roi_align(full, rois, (7, 7), 1 / 16, 2, True).sum(), full)
    assert grad.dtype == torch.bfloat16
    assert_close(grad.float(), grad_reference, atol=1e-5, rtol=2**-8)  # accumulated in float32, rounded once


def test_roi_align_refuses_an_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), 2, 1.0, 1, True, kernel="cuda")


def test_crop_and_resize_gradient_equals_finite_differences():
    g = torch.Generator().manual_seed(3)
    features = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, -0.8, 4.6, 3.2], [1, 2.0, 1.5, 6.4, 5.9], [1, -1.5, 0.0, 2.0, 6.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f: crop_and_resize(f, rois, 4), (features,))


def _is_channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kernel", ["sparse", "torchvision"])
@pytest.mark.parametrize("features_layout", [torch.channels_last, torch.contiguous_format])
def test_roi_align_in_channels_last_equals_torchvision_and_keeps_the_layouts(kernel, features_layout):
    """``memory_format=channels_last`` (what the C4 head asks for): the result is laid out
    channels-last with torchvision's values; a channels-last output gradient comes back as the
    features' gradient in the features' own layout, with torchvision's values."""
    g = torch.Generator().manual_seed(11)
    features = torch.randn(2, 6, 9, 12, generator=g).contiguous(memory_format=features_layout).requires_grad_()
    rois = _random_rois(g)
    ours = roi_align(features, rois, 7, 1 / 16, 2, False, kernel=kernel, memory_format=torch.channels_last)
    theirs = tv_roi_align(features, rois, (7, 7), 1 / 16, 2, False)
    assert _is_channels_last(ours)
    assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(ours.shape, generator=g).contiguous(memory_format=torch.channels_last)
    (grad_ours,) = torch.autograd.grad(ours, features, upstream)
    (grad_theirs,) = torch.autograd.grad(theirs, features, upstream.contiguous())
    assert_close(grad_ours, grad_theirs, atol=1e-4, rtol=1e-5)
    assert _is_channels_last(grad_ours) == (features_layout == torch.channels_last)
    assert grad_ours.is_contiguous(memory_format=features_layout)


@pytest.mark.parametrize("method", ["crop_and_resize", "roi_align", "roi_pool"])
def test_pooler_gives_the_asked_layout_with_the_same_values(method):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(2, 5, 8, 8, generator=g).contiguous(memory_format=torch.channels_last)
    boxes = [torch.tensor([[8.0, 16.0, 96.0, 80.0]]), torch.tensor([[0.0, 0.0, 128.0, 128.0], [30.0, 40.0, 50.0, 70.0]])]
    pooler = RoIPooler(method, 7)
    plain = pooler(f, boxes, 16)
    last = pooler(f, boxes, 16, torch.channels_last)
    assert plain.is_contiguous() and _is_channels_last(last)
    assert_close(last, plain, atol=1e-6, rtol=1e-6)
