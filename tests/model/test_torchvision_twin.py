"""torchvision_twin: torchvision's FasterRCNN, built from one of ours with its weights and settings,
gives our proposals and detections (the pair bench/vs_torchvision.py times)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch.testing import assert_close
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN

from frcnn.interop.torchvision_keys import ours_to_torchvision, torchvision_to_ours
from frcnn.interop.torchvision_twin import torchvision_twin
from frcnn.modeling import FasterRCNN
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbone import build_backbone
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.roi_heads import FCHead, RoIHeads, RoIPooler
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform

from .synthetic import batch


def _ours(pooler: RoIPooler | None = None) -> FasterRCNN:
    torch.manual_seed(0)
    model = FasterRCNN(
        build_backbone("tiny"),
        num_classes=2,
        rpn=partial(RegionProposalNetwork, anchor_generator=AnchorGenerator((24, 48, 96)), conv_channels=128,
                    pre_nms_top_n={"train": 600, "test": 300}, post_nms_top_n={"train": 200, "test": 100},
                    nms_threshold=0.7),
        roi_heads=partial(RoIHeads, pooler=pooler or RoIPooler("roi_align", 7, 2, aligned=False),
                          box_head=partial(FCHead, hidden_dim=64), matcher=Matcher(0.5, 0.5, 0.0)),
        transform=partial(InputTransform, 128, 128),
    )
    g = torch.Generator().manual_seed(1)  # an untrained predictor scores every box alike: widen it
    with torch.no_grad():
        for layer in (model.rpn.head.objectness, model.roi_heads.predictor.cls_score):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
    return model.eval()


def test_the_twin_detects_what_we_detect():
    ours = _ours()
    twin = torchvision_twin(ours)
    assert isinstance(twin, TorchvisionFasterRCNN) and not twin.training
    images, _ = batch(2)
    with torch.no_grad():
        mine = ours(images)
        captured = []
        handle = twin.rpn.register_forward_hook(lambda m, a, out: captured.append(out[0]))
        theirs = twin(images)
        handle.remove()
    for a, b in zip(mine.proposals, captured[0]):  # 128 px in and out: no resize, boxes comparable
        assert len(a) == 100 and a.shape == b.shape
        assert_close(a, b, rtol=0, atol=1e-4)
    for a, b in zip(mine.detections, theirs):
        assert len(a["boxes"]) > 10 and a["boxes"].shape == b["boxes"].shape
        assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])


def test_keys_round_trip_and_background_block():
    state = _ours().state_dict()
    theirs = ours_to_torchvision(state)
    assert "rpn.head.conv.0.0.weight" in theirs and "roi_heads.box_head.fc6.weight" in theirs
    bbox = theirs["roi_heads.box_predictor.bbox_pred.weight"]
    assert bbox.shape[0] == 4 * 3 and bbox[:4].abs().sum() == 0  # a zero background block first
    back = torchvision_to_ours(theirs)
    assert back.keys() == state.keys()
    for key, value in state.items():
        expected = value if not key.startswith("roi_heads.predictor.bbox_pred") else back[key][4:]
        assert_close(expected, value)


def test_what_torchvision_cannot_express_is_named():
    with pytest.raises(ValueError, match="RoIAlign only"):
        torchvision_twin(_ours(RoIPooler("crop_and_resize", 7)))
    with pytest.raises(ValueError, match="aligned=False"):
        torchvision_twin(_ours(RoIPooler("roi_align", 7, 2, aligned=True)))
