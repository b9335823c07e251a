"""Shared by the export tests: informative tiny detectors, test images of many shapes, and the
parity check (detections matched by position)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn
from torch.testing import assert_close
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from frcnn.export.verify import match_by_position
from frcnn.modeling import FasterRCNN
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbone import FPNBackbone
from frcnn.modeling.backbone.tiny import TINY_MEAN, TINY_STD, tiny_net
from frcnn.modeling.roi_heads import FCHead, MultiLevelRoIPooler, RoIHeads
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform

# The tolerances: 1e-3 px on boxes, 1e-4 on scores, after matching by position.
BOX_ATOL, SCORE_ATOL = 1e-3, 1e-4


def make_informative(model: nn.Module, seed: int = 0, background_bias: float = 4.0) -> nn.Module:
    """Redraw the RPN head and the box predictor so that scores spread out (an untrained or briefly
    trained model scores every box about alike, which makes a comparison vacuous), with a
    background bias so that a featureless image has no detection."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, std in ((model.rpn.head.objectness, 0.3), (model.rpn.head.deltas, 0.02)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g) * 0.1)
        heads = getattr(model, "roi_heads", None)
        if heads is not None:
            cls, box = heads.predictor.cls_score, heads.predictor.bbox_pred
            cls.weight.copy_(torch.randn(cls.weight.shape, generator=g) * 0.5)
            cls.bias.zero_()
            cls.bias[0] = background_bias
            box.weight.copy_(torch.randn(box.weight.shape, generator=g) * 0.01)
    return model


def scene(height: int, width: int, seed: int) -> Tensor:
    """(3, H, W) float32 in [0, 1]: a textured background with a few coloured rectangles."""
    g = torch.Generator().manual_seed(seed)
    image = 0.3 + 0.3 * torch.rand(3, height, width, generator=g)
    for _ in range(3):
        y1, x1 = int(torch.randint(0, height // 2, (1,), generator=g)), int(torch.randint(0, width // 2, (1,), generator=g))
        h, w = max(2, height // 3), max(2, width // 3)
        image[:, y1 : y1 + h, x1 : x1 + w] = torch.rand(3, 1, 1, generator=g)
    return image


def blank(height: int, width: int) -> Tensor:
    """A featureless grey image: the informative models find nothing in it."""
    return torch.full((3, height, width), 0.5)


# name -> list of images sharing one size (one call of the exported model each)
def parity_images() -> dict[str, list[Tensor]]:
    return {
        "portrait": [scene(190, 120, 1)],
        "landscape": [scene(120, 210, 2)],
        "small": [scene(40, 57, 3)],
        "large": [scene(1100, 1250, 4)],
        "batch_of_3": [scene(150, 170, 5), scene(150, 170, 6), scene(150, 170, 7)],
        "no_detection": [blank(130, 160)],
    }


def assert_same_detections(expected: list[dict[str, Tensor]], actual: list[dict[str, Tensor]], where: str = "") -> None:
    """Per image: the same count; every detection paired by position (``match_by_position``) with one
    of the same label within 1e-3 px, its score within 1e-4. One exception, stated: at the
    detections-per-image cut-off, a detection tied in score (within 1e-4) with the last one kept may
    be replaced by its tie."""
    assert len(expected) == len(actual), where
    for i, (e, a) in enumerate(zip(expected, actual)):
        context = f"{where} image {i}"
        assert a["boxes"].shape == e["boxes"].shape, f"{context}: {a['boxes'].shape[0]} vs {e['boxes'].shape[0]} detections"
        assert a["labels"].dtype == torch.int64
        pairs = match_by_position(e, a)
        unpaired = (pairs < 0).nonzero()[:, 0]
        if unpaired.numel():
            last = e["scores"][-1]
            at_cut = (e["scores"][unpaired] - last).abs() <= SCORE_ATOL
            assert bool(at_cut.all()), (
                f"{context}: {unpaired.numel()} detections have no partner within {BOX_ATOL} px, e.g. "
                f"{e['boxes'][unpaired[0]].tolist()} label {int(e['labels'][unpaired[0]])} score {float(e['scores'][unpaired[0]]):.6f}"
            )
        kept = pairs >= 0
        assert_close(a["scores"][pairs[kept]], e["scores"][kept], atol=SCORE_ATOL, rtol=0,
                     msg=lambda m, c=context: f"{c} scores: {m}")


def tiny_fpn_faster_rcnn(num_classes: int = 2, min_size: int = 160, max_size: int = 224) -> FasterRCNN:
    """A feature-pyramid detector on the tiny trunk, small enough for CI: levels "0", "1", "2" at
    strides 4, 8, 16 (32 channels) and "pool" at 32; MultiLevelRoIPooler over "0".."2"."""
    torch.manual_seed(0)
    body = IntermediateLayerGetter(tiny_net(), return_layers={"s4": "0", "s8": "1", "s16": "2"})
    fpn = FeaturePyramidNetwork([32, 64, 128], 32, extra_blocks=LastLevelMaxPool())
    backbone = FPNBackbone(
        body, fpn, name="tiny_fpn", strides={"0": 4, "1": 8, "2": 16, "pool": 32}, out_channels=32,
        image_mean=TINY_MEAN, image_std=TINY_STD,
    )
    rpn = partial(
        RegionProposalNetwork,
        anchor_generator=AnchorGenerator(sizes=[[16], [32], [64], [128]], aspect_ratios=(0.5, 1.0, 2.0)),
        conv_channels=32,
        pre_nms_top_n={"train": 300, "test": 150},
        post_nms_top_n={"train": 200, "test": 100},
        nms_threshold=0.7,
    )
    heads = partial(
        RoIHeads, pooler=MultiLevelRoIPooler(featmap_names=("0", "1", "2")), box_head=partial(FCHead, hidden_dim=128)
    )
    return FasterRCNN(backbone, num_classes, rpn=rpn, roi_heads=heads, transform=partial(InputTransform, min_size, max_size))


def eager_detections(model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
    with torch.no_grad():
        return model(images).detections




def make_informative_calibrated(model: nn.Module, seed: int = 0) -> nn.Module:
    """``make_informative`` with the smallest background bias (a grid of 0.1) at which the blank
    image has no detection and at least 6 of the 7 scene images have some: a trained checkpoint's
    features differ from an untrained model's, so one fixed bias does not fit all."""
    for bias in [3.0 + 0.1 * i for i in range(31)]:
        make_informative(model, seed, bias).eval()
        counts = {name: [len(d["boxes"]) for d in eager_detections(model, images)] for name, images in parity_images().items()}
        if counts.pop("no_detection") == [0] and sum(c > 0 for cs in counts.values() for c in cs) >= 6:
            return model
    raise AssertionError("no background bias gives detections on the scenes and none on the blank image")
