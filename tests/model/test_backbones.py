"""Backbones: strides and channels, weight loading (torchvision names and local files), freezing,
frozen BatchNorm. Nothing here downloads: torchvision weights are replaced by local state dicts."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.testing import assert_close
from torchvision.models import ResNet18_Weights, WeightsEnum
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.modeling.backbone import BACKBONES, IMAGENET_MEAN, IMAGENET_STD, build_backbone
from frcnn.modeling.backbone.weights import resolve_weights, weights_statistics
from tests.shared_data import MOBILENET_V2

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
SHARED_MOBILENET_V2 = MOBILENET_V2  # ../shared's int8-derived ImageNet weights, or make data's float ones
NO_WEIGHTS_WARNING = "ignore:frozen_bn=True without pretrained weights"

# name -> (stride, out_channels, c5_out_channels): the documented table, written out independently.
EXPECTED = {
    "tiny": (16, 128, None),
    "vgg16": (16, 512, None),
    "resnet18": (16, 256, 512),
    "resnet34": (16, 256, 512),
    "resnet50": (16, 1024, 2048),
    "resnet101": (16, 1024, 2048),
    "resnet152": (16, 1024, 2048),
    "mobilenet_v2": (16, 96, None),
    "mobilenet_v2_full": (32, 1280, None),
    "mobilenet_v3_large": (16, 112, None),
    "mobilenet_v3_large_full": (32, 960, None),
    "densenet121": (16, 1024, None),
}


def frozen_names(module: nn.Module) -> set[str]:
    return {name for name, p in module.named_parameters() if not p.requires_grad}


def test_every_backbone_is_tested_and_configured():
    assert set(BACKBONES) == set(EXPECTED)
    for name in BACKBONES:
        cfg = OmegaConf.load(REPO / "conf" / "backbone" / f"{name}.yaml")
        assert cfg._target_ == "frcnn.modeling.backbone.build_backbone"
        assert cfg.name == name and cfg.weights_path is None and cfg.frozen_bn is True


def test_config_instantiates_without_download():
    cfg = OmegaConf.load(REPO / "conf" / "backbone" / "resnet18.yaml")
    backbone = instantiate(cfg, weights=None, frozen_bn=False)
    assert backbone.name == "resnet18" and backbone.out_channels == 256


@pytest.mark.filterwarnings(NO_WEIGHTS_WARNING)
@pytest.mark.parametrize("name", list(EXPECTED))
def test_stride_and_channels(name):
    stride, channels, c5_channels = EXPECTED[name]
    backbone = build_backbone(name).eval()
    assert (backbone.name, backbone.stride, backbone.out_channels) == (name, stride, channels)

    H, W = 64, 96  # multiples of 32: the exact case, H / stride by W / stride
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, H, W))
    assert features.shape == (1, channels, H // stride, W // stride)
    assert torch.isfinite(features).all()

    assert backbone.c5_out_channels == c5_channels
    if c5_channels is None:
        assert backbone.c5 is None
    else:  # the C4 head: pooled 14x14 RoIs through conv5, whose first block halves them
        with torch.no_grad():
            rois = backbone.c5(torch.randn(2, channels, 14, 14))
        assert rois.shape == (2, c5_channels, 7, 7)

    if name == "tiny":
        assert backbone.image_mean == (0.5, 0.5, 0.5) and backbone.image_std == (0.25, 0.25, 0.25)
    else:
        assert backbone.image_mean == IMAGENET_MEAN and backbone.image_std == IMAGENET_STD


def test_frozen_bn_without_weights_warns_but_tiny_does_not():
    with pytest.warns(UserWarning, match="frozen_bn=True without pretrained weights"):
        build_backbone("mobilenet_v2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_backbone("tiny")


@pytest.fixture(scope="module")
def shared_mobilenet_v2() -> dict[str, torch.Tensor]:
    return torch.load(SHARED_MOBILENET_V2, map_location="cpu", weights_only=True)


@pytest.mark.shared_data
@pytest.mark.parametrize(("name", "last_block"), [("mobilenet_v2", 13), ("mobilenet_v2_full", 18)])
def test_shared_mobilenet_v2_weights_load_into_the_frozen_backbone(shared_mobilenet_v2, name, last_block):
    backbone = build_backbone(name, weights_path=SHARED_MOBILENET_V2)
    file_keys = {
        k
        for k in shared_mobilenet_v2
        if k.startswith("features.")
        and int(k.split(".")[1]) <= last_block
        and not k.endswith("num_batches_tracked")  # FrozenBatchNorm2d keeps no counter
    }
    state = backbone.state_dict()
    assert {"features." + k.removeprefix("body.") for k in state} == file_keys
    for key, value in state.items():  # weights and the BatchNorm statistics, now in FrozenBatchNorm2d
        assert_close(value, shared_mobilenet_v2["features." + key.removeprefix("body.")], rtol=0, atol=0)

    first_bn = backbone.body[0][1]
    assert isinstance(first_bn, FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert_close(first_bn.running_var, shared_mobilenet_v2["features.0.1.running_var"], rtol=0, atol=0)

    # pretrained default: the stride-2 and stride-4 stages (features 0..3) are frozen, nothing else
    early = {"0", "1", "2", "3"}
    assert {n.split(".")[1] for n in frozen_names(backbone)} == early
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.split(".")[1] not in early)


@pytest.mark.shared_data
def test_frozen_bn_computes_what_the_loaded_bn_computes(shared_mobilenet_v2):
    frozen = build_backbone("mobilenet_v2", weights_path=SHARED_MOBILENET_V2, frozen_bn=True).eval()
    plain = build_backbone("mobilenet_v2", weights_path=SHARED_MOBILENET_V2, frozen_bn=False).eval()
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(frozen(x), plain(x), rtol=1e-4, atol=1e-4)


def test_weights_file_in_a_checkpoint_with_module_prefix(tmp_path):
    source = build_backbone("tiny").body
    path = tmp_path / "tiny.ckpt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    loaded = build_backbone("tiny", weights_path=str(path))
    for key, value in source.state_dict().items():
        assert_close(loaded.body.state_dict()[key], value, rtol=0, atol=0)


@pytest.mark.shared_data
def test_mismatched_weights_file_names_the_file_and_the_keys(tmp_path, shared_mobilenet_v2):
    with pytest.raises(ValueError, match=re.escape(SHARED_MOBILENET_V2.name) + r"[\s\S]*missing keys"):
        build_backbone("mobilenet_v3_large", weights_path=SHARED_MOBILENET_V2)

    state = dict(shared_mobilenet_v2)
    state["features.0.0.weight"] = state["features.0.0.weight"][:8]
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.1.bias"]
    path = tmp_path / "edited.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match="edited.pth") as err:
        build_backbone("mobilenet_v2", weights_path=path)
    message = str(err.value)
    assert "classifier.1.bias" in message and "extra.weight" in message
    assert "features.0.0.weight: file (8, 3, 3, 3) vs model (32, 3, 3, 3)" in message


def test_corrupt_or_absent_weights_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        build_backbone("tiny", weights_path=path)
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        build_backbone("tiny", weights_path=tmp_path / "absent.pth")


@pytest.mark.parametrize(
    ("trainable_layers", "frozen_prefixes"),
    [
        (5, set()),
        (3, {"body.conv1", "body.bn1", "body.layer1"}),
        (1, {"body.conv1", "body.bn1", "body.layer1", "body.layer2", "body.layer3"}),
        (0, {"body.conv1", "body.bn1", "body.layer1", "body.layer2", "body.layer3", "c5"}),
    ],
)
def test_resnet_freezes_exactly_the_leading_stages(trainable_layers, frozen_prefixes):
    backbone = build_backbone("resnet18", trainable_layers=trainable_layers, frozen_bn=False)
    names = [n for n, _ in backbone.named_parameters()]
    expected = {n for n in names if any(n.startswith(prefix + ".") for prefix in frozen_prefixes)}
    assert frozen_names(backbone) == expected
    assert len(expected) > 0 or trainable_layers == 5


def test_vgg16_freezes_conv1_and_conv2_blocks():
    backbone = build_backbone("vgg16", trainable_layers=3)
    conv1_conv2 = {f"body.{i}.{p}" for i in (0, 2, 5, 7) for p in ("weight", "bias")}
    assert frozen_names(backbone) == conv1_conv2


def test_trainable_layers_out_of_range():
    with pytest.raises(ValueError, match=r"\[0, 5\]"):
        build_backbone("resnet18", trainable_layers=6, frozen_bn=False)


def test_torchvision_weight_name_is_resolved_and_loaded(monkeypatch):
    source = torchvision.models.resnet18()  # stands in for the download
    with torch.no_grad():
        source.bn1.running_mean.uniform_(-1, 1)  # not the default zeros, so its arrival shows
    requested = []

    def fake_get_state_dict(self, *args, **kwargs):
        requested.append(self)
        return source.state_dict()

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    backbone = build_backbone("resnet18", weights="ResNet18_Weights.IMAGENET1K_V1")

    assert requested == [ResNet18_Weights.IMAGENET1K_V1]
    assert_close(backbone.body.conv1.weight, source.conv1.weight, rtol=0, atol=0)
    assert_close(backbone.body.bn1.running_mean, source.bn1.running_mean, rtol=0, atol=0)
    assert_close(backbone.c5[1].conv2.weight, source.layer4[1].conv2.weight, rtol=0, atol=0)
    # pretrained default: stem + layer1 frozen (its BatchNorms are buffers now, so only convs)
    assert frozen_names(backbone) == {
        n for n, _ in backbone.named_parameters() if n.startswith(("body.conv1.", "body.layer1."))
    }
    assert "body.layer1.0.conv1.weight" in frozen_names(backbone)


def test_weight_names_and_their_statistics():
    assert resolve_weights("resnet50", "DEFAULT") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert resolve_weights("resnet50", "IMAGENET1K_V1") is torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    assert weights_statistics(resolve_weights("densenet121", "IMAGENET1K_V1")) == (
        IMAGENET_MEAN,
        IMAGENET_STD,
    )
    # the original Caffe VGG weights want 0..255-scaled pixels minus the mean
    mean, std = weights_statistics(resolve_weights("vgg16", "IMAGENET1K_FEATURES"))
    assert mean == (0.48235, 0.45882, 0.40784) and std == (1 / 255, 1 / 255, 1 / 255)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        resolve_weights("resnet18", "IMAGENET22K")
    with pytest.raises(ValueError, match="no torchvision weights"):
        build_backbone("tiny", weights="IMAGENET1K_V1")
