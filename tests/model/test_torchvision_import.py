"""Importing torchvision FasterRCNN state dicts: the name mapping, the class layers, sources, errors.
Nothing downloads: the torchvision weights enum is replaced by a local model's state dict."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch.testing import assert_close
from torchvision.models import WeightsEnum
from torchvision.models.detection import FasterRCNN_MobileNet_V3_Large_FPN_Weights

from frcnn.interop.torchvision_import import apply_init_from, load_torchvision_detection

from .fpn_builders import ARCHS, build_ours

ARCH = "mobilenet_v3_large_fpn"


@pytest.fixture(scope="module")
def checkpoint() -> dict[str, torch.Tensor]:
    """A torchvision MobileNetV3 FPN's state dict (91 outputs), every tensor distinct from our init."""
    torch.manual_seed(0)
    state = ARCHS[ARCH][2](weights=None, weights_backbone=None).state_dict()
    g = torch.Generator().manual_seed(1)
    return {k: v + torch.rand(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()}


@functools.cache
def _built(num_classes: int):
    model, _ = build_ours(ARCH, [f"data.num_classes={num_classes}"])
    return model


def ours(num_classes: int):
    """A fresh copy of our model from the configs (built once per class count)."""
    return copy.deepcopy(_built(num_classes))


def test_every_tensor_lands_where_torchvision_uses_it(checkpoint):
    model = ours(90)
    report = load_torchvision_detection(model, checkpoint)
    assert report.reinitialised == [] and report.checkpoint_classes == 90
    state = model.state_dict()
    renamed = {
        "rpn.head.conv.weight": "rpn.head.conv.0.0.weight",
        "rpn.head.objectness.bias": "rpn.head.cls_logits.bias",
        "rpn.head.deltas.weight": "rpn.head.bbox_pred.weight",
        "roi_heads.box_head.fc1.weight": "roi_heads.box_head.fc6.weight",
        "roi_heads.box_head.fc2.bias": "roi_heads.box_head.fc7.bias",
        "roi_heads.predictor.cls_score.weight": "roi_heads.box_predictor.cls_score.weight",
        "backbone.body.13.block.0.1.running_var": "backbone.body.13.block.0.1.running_var",
        "backbone.fpn.layer_blocks.1.0.weight": "backbone.fpn.layer_blocks.1.0.weight",
    }
    for ours_key, theirs_key in renamed.items():
        assert_close(state[ours_key], checkpoint[theirs_key], rtol=0, atol=0)
    # class-specific deltas: torchvision has a block for the background too, ours start at class 1
    assert_close(state["roi_heads.predictor.bbox_pred.weight"], checkpoint["roi_heads.box_predictor.bbox_pred.weight"][4:])
    assert_close(state["roi_heads.predictor.bbox_pred.bias"], checkpoint["roi_heads.box_predictor.bbox_pred.bias"][4:])
    loaded = {k for k in state if not k.endswith("num_batches_tracked")}
    assert set(report.loaded) == loaded  # frozen BatchNorm here: the file's counters are dropped


def test_old_rpn_head_names_load_too(checkpoint):
    old = dict(checkpoint)  # torchvision's RPNHead before version 2 had a bare conv
    for p in ("weight", "bias"):
        old[f"rpn.head.conv.{p}"] = old.pop(f"rpn.head.conv.0.0.{p}")
    model = ours(90)
    load_torchvision_detection(model, old)
    assert_close(model.rpn.head.conv.weight, checkpoint["rpn.head.conv.0.0.weight"], rtol=0, atol=0)


def test_class_map_takes_the_checkpoints_rows(checkpoint):
    model = ours(2)
    report = load_torchvision_detection(model, checkpoint, class_map=[3, 17])
    assert report.reinitialised == []
    cls_w = checkpoint["roi_heads.box_predictor.cls_score.weight"]
    box_w = checkpoint["roi_heads.box_predictor.bbox_pred.weight"].view(91, 4, -1)
    box_b = checkpoint["roi_heads.box_predictor.bbox_pred.bias"].view(91, 4)
    assert_close(model.roi_heads.predictor.cls_score.weight, cls_w[[0, 3, 17]], rtol=0, atol=0)
    assert_close(model.roi_heads.predictor.bbox_pred.weight, box_w[[3, 17]].reshape(8, -1), rtol=0, atol=0)
    assert_close(model.roi_heads.predictor.bbox_pred.bias, box_b[[3, 17]].reshape(8), rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside the checkpoint's classes 1..90"):
        load_torchvision_detection(model, checkpoint, class_map=[3, 91])


def test_a_checkpoint_that_does_not_fit_names_every_key(checkpoint):
    edited = dict(checkpoint)
    del edited["rpn.head.cls_logits.bias"]
    edited["extra.weight"] = torch.zeros(1)
    edited["backbone.fpn.inner_blocks.0.0.weight"] = torch.zeros(256, 8, 1, 1)
    with pytest.raises(ValueError) as err:
        load_torchvision_detection(ours(90), edited)
    message = str(err.value)
    assert "rpn.head.objectness.bias" in message and "extra.weight" in message
    assert "backbone.fpn.inner_blocks.0.0.weight: checkpoint (256, 8, 1, 1) vs model (256, 160, 1, 1)" in message
    with pytest.raises(ValueError, match="not a torchvision FasterRCNN"):
        load_torchvision_detection(ours(90), {"fc.weight": torch.zeros(2, 2)})


def test_torchvision_names_resolve_to_coco_weights(monkeypatch, checkpoint):
    requested = []

    def fake_get_state_dict(self, *args, **kwargs):  # stands in for the download
        requested.append(self)
        return checkpoint

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = ours(2)
    fresh = model.roi_heads.predictor.cls_score.weight.clone()
    apply_init_from(model, "torchvision:fasterrcnn_mobilenet_v3_large_fpn")
    assert requested == [FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1]
    assert_close(model.rpn.head.conv.weight, checkpoint["rpn.head.conv.0.0.weight"], rtol=0, atol=0)
    assert_close(model.roi_heads.predictor.cls_score.weight, fresh, rtol=0, atol=0)  # 2 classes: re-initialised
    report = load_torchvision_detection(model, "torchvision:fasterrcnn_mobilenet_v3_large_fpn:COCO_V1")
    assert report.source == "torchvision:fasterrcnn_mobilenet_v3_large_fpn:COCO_V1"
    assert len(report.reinitialised) == 4

    with pytest.raises(ValueError, match="supported torchvision detectors"):
        apply_init_from(model, "torchvision:fasterrcnn_resnet50_fpn_v2")
    with pytest.raises(ValueError, match="unknown weights 'IMAGENET'"):
        apply_init_from(model, "torchvision:fasterrcnn_mobilenet_v3_large_fpn:IMAGENET")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init_from(model, None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
