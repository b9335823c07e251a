"""Inference rewrites (frcnn.layers.inference_rewrite): BatchNorm folded into convolutions, channels-last weights.

The rewritten networks must compute what the originals compute (to float rounding), with no
BatchNorm left where one followed a convolution.
"""

from __future__ import annotations

import copy
import warnings
from functools import partial

import pytest
import torch
from torch import nn
from torch.testing import assert_close
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.layers.batchnorm import fold_batchnorm, fold_conv_bn
from frcnn.layers.inference_rewrite import optimize_for_inference
from frcnn.modeling import FasterRCNN
from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.backbone import build_backbone
from frcnn.modeling.backbone.fpn import build_fpn_backbone
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.roi_heads.box_head import ResNetC5Head
from frcnn.modeling.roi_heads.poolers import RoIPooler
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform

from .synthetic import batch

NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)


def test_fold_conv_bn_hand_computed():
    conv = nn.Conv2d(1, 2, 1, bias=False)
    conv.weight.data = torch.tensor([2.0, -1.0]).view(2, 1, 1, 1)
    bn = FrozenBatchNorm2d(2, eps=1.0)
    bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
    bn.running_var.copy_(torch.tensor([3.0, 0.0]))  # 1 / sqrt(var + eps) = 0.5, 1
    bn.weight.copy_(torch.tensor([2.0, 3.0]))
    bn.bias.copy_(torch.tensor([0.5, -1.0]))
    fused = fold_conv_bn(conv, bn)
    # W' = W * g / sqrt(var + eps) = (2 * 1, -1 * 3); b' = (0 - mean) * scale + b = (-0.5, -1)
    assert_close(fused.weight.view(2), torch.tensor([2.0, -3.0]))
    assert_close(fused.bias, torch.tensor([-0.5, -1.0]))
    x = torch.full((1, 1, 1, 1), 4.0)
    # bn(conv(4)) = ((8 - 1) * 0.5 * 2 + 0.5, (-4 - 0) * 1 * 3 - 1) = (7.5, -13)
    assert_close(fused(x).view(2), torch.tensor([7.5, -13.0]))
    assert_close(bn(conv(x)), fused(x))


def test_fold_conv_bn_keeps_the_conv_bias_and_a_plain_batchnorm():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1, bias=True)
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.normal_()
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert_close(fold_conv_bn(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)


def _informative_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random-weight BatchNorms are the identity; give them statistics so folding is tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, NORMS):
            n = m.running_mean.numel()
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(n, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(n, generator=g))
    return model


def _count(model: nn.Module, kind) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# name -> BatchNorms that stay (DenseNet normalises *before* its convolutions: only the stem folds)
BACKBONES = {
    "resnet18": 0,
    "mobilenet_v2": 0,
    "mobilenet_v3_large": 0,
    "densenet121": None,
    "resnet50_fpn": 0,
}


@pytest.mark.parametrize("name", BACKBONES)
def test_backbones_compute_the_same_after_the_rewrite(name):
    torch.manual_seed(0)
    with warnings.catch_warnings():  # frozen BatchNorm without weights: _informative_norms below
        warnings.simplefilter("ignore", UserWarning)
        backbone = build_fpn_backbone(name) if name.endswith("_fpn") else build_backbone(name)
    backbone = _informative_norms(backbone).eval()
    norms_before = _count(backbone, NORMS)
    optimized = optimize_for_inference(copy.deepcopy(backbone))

    if BACKBONES[name] is None:  # densenet121: only conv0 -> norm0 is conv-then-norm
        assert _count(optimized, NORMS) == norms_before - 1
    else:
        assert _count(optimized, NORMS) == BACKBONES[name]
    convs = [m for m in optimized.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    assert not any(p.requires_grad for p in optimized.parameters()) and not optimized.training

    x = torch.rand(2, 3, 96, 128)
    with torch.inference_mode():
        expected, actual = backbone(x), optimized(x)
    if isinstance(expected, torch.Tensor):
        expected, actual = {"out": expected}, {"out": actual}
    assert expected.keys() == actual.keys()
    for key in expected:
        scale = expected[key].abs().max()
        assert scale > 0
        assert_close(actual[key] / scale, expected[key] / scale, rtol=0, atol=2e-5)
        if name.startswith("resnet") and key == "out":  # the C5 head is folded with it
            with torch.inference_mode():
                rois = torch.rand(3, 1024 if name == "resnet50" else 256, 14, 14)
                assert_close(optimized.c5(rois), backbone.c5(rois), rtol=1e-4, atol=1e-4)


def test_fold_batchnorm_leaves_a_norm_before_its_conv_alone():
    torch.manual_seed(0)
    net = _informative_norms(
        nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.ReLU(), nn.BatchNorm2d(3))
    ).eval()
    reference = copy.deepcopy(net)
    assert fold_batchnorm(net) == 0  # norm -> conv, and conv -> relu -> norm: nothing to fold
    x = torch.randn(1, 3, 5, 5)
    assert_close(net(x), reference(x))


def _c4_detector() -> FasterRCNN:
    """ResNet-18 C4 with the conv5 box head, informative BatchNorm statistics, 3 classes."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="frozen_bn"):
        backbone = build_backbone("resnet18")
    model = FasterRCNN(
        backbone,
        3,
        rpn=partial(
            RegionProposalNetwork,
            anchor_generator=AnchorGenerator(sizes=(32, 64), aspect_ratios=(0.5, 1.0, 2.0)),
            conv_channels=64,
            pre_nms_top_n={"train": 300, "test": 300},
            post_nms_top_n={"train": 50, "test": 50},
            nms_threshold=0.7,
        ),
        roi_heads=partial(
            RoIHeads, pooler=RoIPooler("roi_align", 14, sampling_ratio=2), box_head=ResNetC5Head
        ),
        transform=partial(InputTransform, 128, 128),
    )
    # An untrained predictor scores every box alike; wider weights make the scores differ.
    g = torch.Generator().manual_seed(1)
    for layer in (model.roi_heads.predictor.cls_score, model.rpn.head.objectness):
        layer.weight.data.copy_(torch.randn(layer.weight.shape, generator=g))
    return _informative_norms(model).eval()


def test_detector_detections_are_unchanged():
    model = _c4_detector()
    optimized = optimize_for_inference(copy.deepcopy(model))
    assert _count(optimized, NORMS) == 0
    images, _ = batch(2)
    with torch.inference_mode():
        expected, actual = model(images), optimized(images)
    for want, got in zip(expected.proposals, actual.proposals):
        assert len(want) == 50
        assert_close(got, want, rtol=0, atol=1e-3)
    for want, got in zip(expected.detections, actual.detections):
        assert len(want["boxes"]) > 0
        assert_close(got["boxes"], want["boxes"], rtol=0, atol=1e-3)
        assert_close(got["scores"], want["scores"], rtol=1e-4, atol=1e-5)
        assert torch.equal(got["labels"], want["labels"])
