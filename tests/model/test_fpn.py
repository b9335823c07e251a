"""The multi-level pieces, each against torchvision's own: per-level anchors, per-level proposal
selection, RoI-to-level assignment and multi-level RoIAlign, and the FPN backbones."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch.testing import assert_close
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import LevelMapper

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbone import build_fpn_backbone
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.roi_heads.poolers import MultiLevelRoIPooler, fpn_levels
from frcnn.modeling.rpn import select_proposals

RATIOS = (0.5, 1.0, 2.0)


def pyramid(N: int, H: int, W: int, strides=(4, 8, 16, 32), channels: int = 3, seed: int = 0) -> OrderedDict:
    """Random maps "0".. at ``strides`` of an (H, W) batch, plus "pool" (max-pool of the last)."""
    g = torch.Generator().manual_seed(seed)
    maps = OrderedDict(
        (str(i), torch.randn(N, channels, -(-H // s), -(-W // s), generator=g)) for i, s in enumerate(strides)
    )
    last = maps[str(len(strides) - 1)]
    maps["pool"] = torch.nn.functional.max_pool2d(last, 1, 2, 0)
    return maps


def random_boxes(n: int, size: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = 2 + torch.rand(n, 2, generator=g) ** 2 * size * 0.9  # many small, some large
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize(
    "sizes",
    [((32,), (64,), (128,), (256,), (512,)), ((32, 64, 128, 256, 512),) * 5],  # ResNet-50 / MobileNet style
)
def test_per_level_anchors_equal_torchvision(sizes):
    # 352 x 480 is a multiple of 32 but not of 64: "pool" (6 x 8) has strides 58 x 60, as in torchvision
    maps = list(pyramid(2, 352, 480).values())
    images = ImageList(torch.zeros(2, 3, 352, 480), [(352, 470), (300, 480)])
    theirs = TVAnchorGenerator(sizes, (RATIOS,) * len(sizes))(images, maps)
    ours = AnchorGenerator([list(s) for s in sizes], RATIOS)(maps, (352, 480))
    assert [a.shape[0] for a in ours] == [m.shape[-2] * m.shape[-1] * len(sizes[0]) * 3 for m in maps]
    assert_close(torch.cat(ours), theirs[0], rtol=0, atol=0)
    assert_close(torch.cat(ours), theirs[1], rtol=0, atol=0)


def test_flat_sizes_repeat_on_every_level_and_mismatches_are_named():
    maps = list(pyramid(1, 64, 64, strides=(16, 32)).values())
    flat = AnchorGenerator((32, 64), RATIOS)(maps, (64, 64))
    per_level = AnchorGenerator([[32, 64]] * 3, RATIOS)(maps, (64, 64))
    for a, b in zip(flat, per_level):
        assert_close(a, b)
    with pytest.raises(ValueError, match="5 feature level"):
        AnchorGenerator([[32], [64], [128], [256], [512]], RATIOS)(maps, (64, 64))
    with pytest.raises(ValueError, match="same number of anchor sizes"):
        AnchorGenerator([[32], [64, 128]], RATIOS)


def test_proposal_selection_is_per_level_like_torchvision():
    """Random logits and deltas on three levels: the same proposals as torchvision's filter_proposals
    (per-level top-k, clip, small-box and score filter, NMS per level, top-n per image)."""
    g = torch.Generator().manual_seed(0)
    maps = list(pyramid(2, 128, 192, strides=(8, 16, 32)).values())[:3]
    generator = AnchorGenerator([[32], [64], [128]], RATIOS)
    anchors_per_level = generator(maps, (128, 192))
    counts = [a.shape[0] for a in anchors_per_level]
    anchors = torch.cat(anchors_per_level)  # (M, 4)
    logits = torch.randn(2, anchors.shape[0], generator=g) * 3  # (N, M)
    deltas = torch.randn(2, anchors.shape[0], 4, generator=g) * 0.3  # (N, M, 4)
    image_sizes = [(128, 180), (100, 192)]
    settings = dict(pre_nms_top_n=50, post_nms_top_n=70, nms_threshold=0.6, score_threshold=0.2)

    ours = select_proposals(anchors, logits, deltas, image_sizes, counts, BoxCoder(), **settings)
    proposals, proposal_logits = ours.boxes, ours.logits

    theirs = TVRegionProposalNetwork(
        TVAnchorGenerator(((32,), (64,), (128,)), (RATIOS,) * 3),
        TVRPNHead(3, 3),
        0.7, 0.3, 256, 0.5,
        {"training": 0, "testing": settings["pre_nms_top_n"]},
        {"training": 0, "testing": settings["post_nms_top_n"]},
        settings["nms_threshold"],
        score_thresh=settings["score_threshold"],
    ).eval()
    decoded = BoxCoder().decode(deltas.reshape(-1, 4), anchors.repeat(2, 1)).view(2, -1, 4)
    expected, expected_scores = theirs.filter_proposals(decoded, logits, image_sizes, counts)
    for i in range(2):
        assert proposals[i].shape[0] > 40  # several levels contribute
        assert_close(proposals[i], expected[i], rtol=0, atol=0)
        assert_close(torch.sigmoid(proposal_logits[i]), expected_scores[i], rtol=0, atol=0)


def test_nms_does_not_cross_levels():
    """The same box proposed by two levels survives twice; within a level, the weaker copy goes."""
    settings = dict(box_coder=BoxCoder(), pre_nms_top_n=6000, post_nms_top_n=300, nms_threshold=0.5)
    box = [10.0, 10.0, 50.0, 50.0]
    anchors = torch.tensor([box, [11.0, 10.0, 51.0, 50.0], box])  # level 0: two, level 1: one
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    two_levels = select_proposals(anchors, logits, torch.zeros(1, 3, 4), [(64, 64)], [2, 1], **settings)
    assert_close(two_levels.boxes[0], torch.tensor([box, box]))
    assert_close(two_levels.logits[0], torch.tensor([3.0, 1.0]))
    one_level = select_proposals(anchors, logits, torch.zeros(1, 3, 4), [(64, 64)], [3], **settings)
    assert_close(one_level.boxes[0], torch.tensor([box]))


def test_roi_levels_equal_torchvision_level_mapper():
    boxes = random_boxes(500, 900.0, seed=1)
    # boxes whose sqrt(area) sits on a level boundary (112, 224, 448) or next to it
    edges = torch.tensor([56.0, 112.0, 224.0, 448.0, 896.0])
    for eps in (-1e-3, 0.0, 1e-3):
        side = edges + eps
        boxes = torch.cat((boxes, torch.stack((torch.zeros(5), torch.zeros(5), side, side), dim=1)))
    expected = LevelMapper(2, 5)([boxes])
    assert_close(fpn_levels(boxes, 2, 5), expected, rtol=0, atol=0)
    side = torch.tensor([223.9, 224.0, 447.9, 448.0])
    square = torch.stack((torch.zeros(4), torch.zeros(4), side, side), dim=1)
    assert fpn_levels(square, 2, 5).tolist() == [1, 2, 2, 3]  # level k at 224 * 2^(k-4): index k - 2


@pytest.mark.parametrize("strides", [(4, 8, 16, 32), (32, 32)])  # ResNet-50 FPN, MobileNetV3 FPN
def test_multi_level_roi_align_equals_multiscale_roi_align(strides):
    H, W = 512, 640
    features = pyramid(2, H, W, strides=strides, channels=4, seed=2)
    large = torch.tensor([[0.0, 0.0, 480.0, 500.0], [20.0, 10.0, 600.0, 490.0]])  # level "3" (stride 32)
    boxes = [torch.cat((random_boxes(60, 500.0, seed=3), large)), random_boxes(40, 500.0, seed=4)]
    image_sizes = [(500, 640), (512, 600)]
    if len(strides) == 4:  # every level gets RoIs
        assert fpn_levels(torch.cat(boxes), 2, 5).unique().tolist() == [0, 1, 2, 3]
    reference = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    pooler = MultiLevelRoIPooler()  # the FPN config's defaults
    named_strides = {name: s for name, s in zip(features, [*strides, 2 * strides[-1]])}

    with torch.no_grad():  # evaluation
        expected = reference(features, boxes, image_sizes)
        # float rounding of a different summation order (frcnn.layers.roi_align's sparse product)
        assert_close(pooler(features, boxes, named_strides), expected, rtol=1e-4, atol=1e-4)

    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in features.items())
    ours = pooler(leaves, boxes, named_strides)  # training
    theirs = reference(leaves, boxes, image_sizes)
    assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(5))
    grads_ours = torch.autograd.grad((ours * weights).sum(), list(leaves.values())[:-1], allow_unused=True)
    grads_theirs = torch.autograd.grad((theirs * weights).sum(), list(leaves.values())[:-1], allow_unused=True)
    for a, b, f in zip(grads_ours, grads_theirs, leaves.values()):
        zero = torch.zeros_like(f)  # a map no RoI is pooled from gets no gradient
        assert_close(zero if a is None else a, zero if b is None else b, rtol=1e-4, atol=1e-4)


def test_inference_pools_each_level_in_chunks_with_the_same_values(monkeypatch):
    """Without autograd a level is pooled a few RoIs at a time (no level-sized intermediate beside
    the output); the values stay torchvision's. With autograd, one call per level."""
    from frcnn.modeling.roi_heads import poolers

    features = pyramid(2, 512, 640, strides=(4, 8, 16, 32), channels=4, seed=2)
    boxes = [random_boxes(60, 500.0, seed=3), random_boxes(40, 500.0, seed=4)]
    named_strides = {name: s for name, s in zip(features, [4, 8, 16, 32, 64])}
    monkeypatch.setattr(poolers, "POOL_CHUNK_BYTES", 3 * 4 * 7 * 7 * 4)  # 3 RoIs of 4 channels
    pooler = MultiLevelRoIPooler()
    calls = []
    pool_rois = pooler.pooler.pool_rois
    monkeypatch.setattr(pooler.pooler, "pool_rois", lambda f, r, s, layout: calls.append(len(r)) or pool_rois(f, r, s, layout))
    expected = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, [(500, 640), (512, 600)])
    with torch.no_grad():
        got = pooler(features, boxes, named_strides)
    assert_close(got, expected, rtol=1e-4, atol=1e-4)
    per_level = torch.bincount(fpn_levels(torch.cat(boxes), 2, 5), minlength=4).tolist()
    assert sorted(calls, reverse=True) == sorted([min(3, n - i) for n in per_level for i in range(0, n, 3)], reverse=True)
    assert max(calls) == 3 and sum(calls) == 100
    calls.clear()
    leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in features.items())
    assert_close(pooler(leaves, boxes, named_strides), expected, rtol=1e-4, atol=1e-4)
    assert sorted(calls) == sorted(n for n in per_level if n)  # training: one call per level


def test_mobilenet_fpn_backbone_is_torchvisions():
    reference = fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).backbone
    ours = build_fpn_backbone("mobilenet_v3_large_fpn", frozen_bn=False)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}
    assert all(p.requires_grad for p in ours.parameters())  # no pretrained weights: everything trains
    assert ours.out_channels == 256 and ours.size_divisible == 32
    assert ours.strides == {"0": 32, "1": 32, "pool": 64}
    with torch.no_grad():
        maps = ours.eval()(torch.randn(1, 3, 128, 192))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        name: (1, 256, 128 // s, 192 // s) for name, s in ours.strides.items()
    }

    frozen = build_fpn_backbone("mobilenet_v3_large_fpn", trainable_layers=3)  # frozen_bn by default
    expected = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    assert [n for n, p in frozen.named_parameters() if p.requires_grad] == [
        n for n, p in expected.named_parameters() if p.requires_grad
    ]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())


def test_resnet50_fpn_backbone_strides_and_trainable_layers():
    backbone = build_fpn_backbone("resnet50_fpn", trainable_layers=3)
    assert backbone.strides == {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    frozen = {n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # torchvision's default: layer2..layer4 and the FPN train
    with torch.no_grad():
        maps = backbone.eval()(torch.randn(1, 3, 64, 128))
    assert [tuple(m.shape) for m in maps.values()] == [(1, 256, 64 // s, 128 // s) for s in backbone.strides.values()]
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        build_fpn_backbone("resnet50_fpn", trainable_layers=6)
