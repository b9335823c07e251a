"""The export graph's own pieces against the eager ones they replace: the resize (size and pixels)
and the NMS operator."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.ops import nms

from frcnn.export.ops import batched_nms
from frcnn.export.resize import bilinear_resize, pad_to_multiple, resized_size
from frcnn.modeling.transform import InputTransform


def test_resized_size_is_the_input_transforms_for_every_size():
    """Including the sizes where a float product H * scale would fall just below an integer."""
    transform = InputTransform(600, 1000, size_divisible=32, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    for H in range(50, 1400, 7):
        for W in (333, 517, 640, 733, 1333):
            expected = tuple(transform.resize(torch.zeros(1, H, W), 600).shape[-2:])
            assert resized_size(H, W, 600, 1000) == expected, (H, W)


def test_the_governing_side_reaches_its_target_exactly():
    # 562 * (600 / 562) is 599.999... in double: a float rule would make it 599. The exact rule:
    # 600 x floor(733 * 600 / 562) = floor(782.56) = 782, in the eager model and in the graph's.
    assert 562 * (600 / 562) < 600
    assert resized_size(562, 733, 600, 1000) == (600, 782)
    assert tuple(InputTransform(600, 1000, 32, (0, 0, 0), (1, 1, 1)).resize(torch.zeros(1, 562, 733), 600).shape[-2:]) == (600, 782)


@pytest.mark.parametrize(("size", "out"), [((333, 517), (600, 931)), ((1200, 900), (800, 600)), ((37, 1500), (24, 1000)),
                                           ((64, 64), (600, 600)), ((600, 1000), (600, 1000))])
@pytest.mark.parametrize("threads", [1, 2])
def test_bilinear_resize_equals_torchs_kernel(size, out, threads):
    """PyTorch's CPU kernel rounds its sample positions once (a fused multiply-add); so does this.
    A position one float step off moves a value by up to 3e-5; the sums' rounding is 2e-7."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
        assert_close(bilinear_resize(x, *out), F.interpolate(x, size=out, mode="bilinear"), atol=3e-7, rtol=0)
    finally:
        torch.set_num_threads(previous)


def test_pad_to_multiple_pads_bottom_right_with_zeros():
    x = torch.ones(1, 3, 5, 17)
    padded = pad_to_multiple(x, 16)
    assert padded.shape == (1, 3, 16, 32)
    assert padded[..., :5, :17].eq(1).all() and padded.sum() == 3 * 5 * 17


def test_nms_op_is_torchvisions_per_set_without_minus_inf_and_capped():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 30, 2, generator=g) * 50
    boxes = torch.cat((xy, xy + 10 + 20 * torch.rand(2, 30, 2, generator=g)), dim=2)  # (B=2, n=30, 4)
    scores = torch.rand(2, 2, 30, generator=g)  # C = 2 score rows per set
    scores[0, 1, :10] = float("-inf")
    selected = batched_nms(boxes, scores, 5, 0.3)
    for b in range(2):
        for c in range(2):
            rows = selected[(selected[:, 0] == b) & (selected[:, 1] == c), 2]
            candidates = torch.isfinite(scores[b, c]).nonzero()[:, 0]
            expected = candidates[nms(boxes[b, candidates], scores[b, c, candidates], 0.3)][:5]
            assert torch.equal(rows, expected), (b, c)
    assert not torch.isin(selected[(selected[:, 0] == 0) & (selected[:, 1] == 1), 2], torch.arange(10)).any()


def test_nms_op_of_nothing_selects_nothing():
    selected = batched_nms(torch.zeros(1, 4, 4), torch.full((1, 1, 4), float("-inf")), 10, 0.5)
    assert selected.shape == (0, 3) and selected.dtype == torch.int64
