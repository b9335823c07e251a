import torch
from torch.testing import assert_close
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from frcnn.modeling.anchors import AnchorGenerator


def test_hand_written_2x2_map():
    gen = AnchorGenerator(sizes=(32,), aspect_ratios=(0.5, 1.0, 2.0))
    anchors = gen(torch.zeros(1, 8, 2, 2), (32, 32))
    # base anchors (ratio = h / w): 0.5 -> w 45.25, h 22.63 -> rounded halves 23, 11
    base = torch.tensor([[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]])
    shifts = torch.tensor([[0.0, 0.0], [16.0, 0.0], [0.0, 16.0], [16.0, 16.0]])  # row-major (x, y)
    expected = torch.cat([base + s.repeat(2) for s in shifts])
    assert_close(anchors, expected)
    assert gen.num_anchors_per_location == 3


def test_offset_centres_anchors_in_cells():
    anchors = AnchorGenerator(sizes=(16,), aspect_ratios=(1.0,), offset=0.5)(torch.zeros(1, 1, 1, 2), (16, 32))
    assert_close(anchors, torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 0.0, 32.0, 16.0]]))


def test_same_as_torchvision_anchor_generator():
    sizes, ratios = (64, 128, 256, 512), (0.5, 1.0, 2.0)
    feature = torch.zeros(2, 16, 13, 17)
    images = ImageList(torch.zeros(2, 3, 208, 272), [(200, 270), (208, 250)])
    theirs = TVAnchorGenerator(sizes=(sizes,), aspect_ratios=(ratios,))(images, [feature])
    ours = AnchorGenerator(sizes, ratios)(feature, (208, 272))
    assert_close(ours, theirs[0])
    assert_close(ours, theirs[1])


def test_cached_per_size():
    gen = AnchorGenerator()
    a = gen(torch.zeros(1, 1, 4, 5), (64, 80))
    assert gen(torch.zeros(1, 1, 4, 5), (64, 80)) is a
    assert gen(torch.zeros(1, 1, 5, 4), (80, 64)).shape == a.shape and not torch.equal(gen(torch.zeros(1, 1, 5, 4), (80, 64)), a)
