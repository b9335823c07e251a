"""Feature-pyramid backbones: a torchvision trunk + ``FeaturePyramidNetwork`` + ``LastLevelMaxPool``.

Shape shorthand: N images; C = ``out_channels`` (256) on every level; level ``name`` has stride
``strides[name]``, so its map is (N, C, H / s, W / s) for a batch padded to a multiple of 32.

Built with torchvision's own extractors (``_resnet_fpn_extractor``, ``_mobilenet_extractor``), so
the modules, their state-dict keys (``body.*``, ``fpn.*``) and their trainable layers are those of
torchvision's ``fasterrcnn_resnet50_fpn`` / ``fasterrcnn_mobilenet_v3_large_fpn`` backbones, and
their COCO checkpoints load without renaming.

    resnet50_fpn: layer1..layer4 -> "0".."3" at strides 4, 8, 16, 32; "pool" (max-pool of "3") at 64.
    mobilenet_v3_large_fpn: torchvision's choice, the last two stages: the output of features[13]
        (the stride-32 block, 160 ch) -> "0" and of features[16] (960 ch) -> "1", both at stride 32,
        and "pool" at 64.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from torch import Tensor, nn
from torchvision.models import get_model
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from .backbone import IMAGENET_MEAN, IMAGENET_STD
from .weights import downloading, load_strict, read_state_dict, resolve_weights, weights_statistics

# name -> (torchvision classification trunk, number of stages ``trainable_layers`` counts)
FPN_BACKBONES: dict[str, tuple[str, int]] = {
    "resnet50_fpn": ("resnet50", 5),
    "mobilenet_v3_large_fpn": ("mobilenet_v3_large", 6),
}

# torchvision's detection default when the trunk is pretrained: the last three stages train.
DEFAULT_TRAINABLE_LAYERS = 3


class FPNBackbone(nn.Module):
    """Several maps of ``out_channels`` channels, finest first, plus what the detector must know.

    ``forward(x)``: ``x`` float32 ``(N, 3, H, W)`` normalised with ``image_mean`` / ``image_std``
    -> ``OrderedDict`` name -> ``(N, out_channels, ceil(H / s), ceil(W / s))``, s = ``strides[name]``.
    ``size_divisible``: the multiple the InputTransform pads the batch to (32, as torchvision does;
    the "pool" level of a batch that is not a multiple of 64 then has a stride the anchors read off
    the shapes, like torchvision's).
    """

    def __init__(
        self,
        body: nn.Module,
        fpn: nn.Module,
        *,
        name: str,
        strides: dict[str, int],
        out_channels: int,
        image_mean: tuple[float, float, float] = IMAGENET_MEAN,
        image_std: tuple[float, float, float] = IMAGENET_STD,
        size_divisible: int = 32,
    ) -> None:
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.name = name
        self.strides = dict(strides)
        self.out_channels = out_channels
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.size_divisible = size_divisible

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        """(N, 3, H, W) normalised -> {"0": finest map, ..., "pool": coarsest}."""
        return self.fpn(self.body(x))

    def extra_repr(self) -> str:
        return f"name={self.name}, out_channels={self.out_channels}, strides={self.strides}"


def build_fpn_backbone(
    name: str,
    weights: str | None = None,
    weights_path: str | Path | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool = True,
) -> FPNBackbone:
    """Build FPN backbone ``name`` (a key of ``FPN_BACKBONES``), its trunk optionally pretrained.

    weights: a torchvision weight name of the trunk's classification model (``"IMAGENET1K_V1"``,
        ``"DEFAULT"``); downloads once. For COCO detection weights use ``init_from`` on the model
        instead (``frcnn.interop.torchvision_import``), which overwrites the whole detector.
    weights_path: a local state dict of the whole classification trunk (strict).
    trainable_layers: trunk stages that train, counted from the deepest, as torchvision counts them
        (ResNet: layer4, layer3, layer2, layer1, conv1: 0..5; MobileNetV3: 0..6). None: 3 (torchvision's
        detection default) with pretrained weights, all without. The FPN itself always trains.
    frozen_bn: the trunk's normalisation is ``FrozenBatchNorm2d`` (torchvision's choice for a
        pretrained trunk; also what its COCO checkpoints hold), else plain ``BatchNorm2d``. Either way
        torchvision's eps (1e-5) is used, so imported checkpoints compute what they computed there.
    """
    if name not in FPN_BACKBONES:
        raise ValueError(f"unknown FPN backbone {name!r}; known: {', '.join(FPN_BACKBONES)}")
    if weights is not None and weights_path is not None:
        raise ValueError("give weights (a torchvision name) or weights_path (a local file), not both")
    arch, num_stages = FPN_BACKBONES[name]
    pretrained = weights is not None or weights_path is not None
    if trainable_layers is None:
        trainable_layers = DEFAULT_TRAINABLE_LAYERS if pretrained else num_stages
    if not 0 <= trainable_layers <= num_stages:
        raise ValueError(f"trainable_layers of {name} must be in [0, {num_stages}], got {trainable_layers}")

    resolved = resolve_weights(arch, weights) if weights is not None else None
    image_mean, image_std = weights_statistics(resolved) if resolved is not None else (IMAGENET_MEAN, IMAGENET_STD)
    with downloading(resolved):  # torchvision downloads named weights on first use
        trunk = get_model(arch, weights=resolved, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d)
    if weights_path is not None:
        state = read_state_dict(weights_path)
        expected = trunk.state_dict()
        # FrozenBatchNorm2d keeps no num_batches_tracked: a BatchNorm network's file has them.
        state = {k: v for k, v in state.items() if k in expected or not k.endswith("num_batches_tracked")}
        load_strict(trunk, state, source=str(weights_path))

    if arch.startswith("resnet"):
        extracted = _resnet_fpn_extractor(trunk, trainable_layers)
        strides = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
    else:
        extracted = _mobilenet_extractor(trunk, True, trainable_layers)
        strides = _returned_strides(extracted.body)
    return FPNBackbone(
        extracted.body,
        extracted.fpn,
        name=name,
        strides=strides,
        out_channels=extracted.out_channels,
        image_mean=image_mean,
        image_std=image_std,
    )


def _returned_strides(body: nn.Module) -> dict[str, int]:
    """Strides of the maps a MobileNet ``IntermediateLayerGetter`` returns, plus "pool" at twice the last.

    The stem halves the input and every block marked ``_is_cn`` (stride 2) halves it again.
    """
    strides, stride = {}, 1
    for module_name, module in body.named_children():
        if module_name == "0" or getattr(module, "_is_cn", False):
            stride *= 2
        if module_name in body.return_layers:
            strides[body.return_layers[module_name]] = stride
    strides["pool"] = 2 * stride
    return strides
