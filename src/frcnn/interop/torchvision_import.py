"""Start from torchvision's detection checkpoints: map a torchvision ``FasterRCNN`` state dict onto ours.

Sources (``init_from``):
    ``torchvision:fasterrcnn_resnet50_fpn``             COCO weights (downloaded once by torchvision)
    ``torchvision:fasterrcnn_mobilenet_v3_large_fpn``   idem; ``..._320_fpn`` is the same network
    ``torchvision:<model>:<weights>``                   a named weights entry, e.g. ``COCO_V1``
    ``path/to/file.pth``                                a saved state dict of a torchvision FasterRCNN

The model must be built to match (``model=faster_rcnn_fpn backbone=resnet50_fpn``, or
``model=faster_rcnn_fpn_mobilenet backbone=mobilenet_v3_large_fpn``). Key names map by the table
of ``frcnn.interop.torchvision_keys`` (the backbone keeps torchvision's).

When the model's class count differs from the checkpoint's (COCO: 90 + background), the two
class-specific layers keep the model's own fresh initialisation and everything else is loaded, so
fine-tuning on VOC or a custom dataset starts from COCO features. ``class_map`` instead picks the
checkpoint's rows for each class (e.g. this project's 80 contiguous COCO labels from torchvision's
91 category ids).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights

from frcnn.interop.torchvision_keys import torchvision_to_ours
from frcnn.modeling.backbone.weights import downloading, key_mismatches, read_state_dict

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision:"
SUPPORTED_MODELS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
CLASS_SPECIFIC = tuple(
    f"roi_heads.predictor.{layer}.{p}" for layer in ("cls_score", "bbox_pred") for p in ("weight", "bias")
)


@dataclass
class ImportReport:
    """What ``load_torchvision_detection`` did: keys loaded, and class-specific keys left as initialised."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    checkpoint_classes: int = 0  # K of the checkpoint, without background


def torchvision_state_dict(source: str | Path) -> tuple[dict[str, Tensor], str]:
    """``torchvision:<model>[:<weights>]`` (downloads) or a local file -> (state dict, description)."""
    source = str(source)
    if not source.startswith(TORCHVISION_PREFIX):
        return read_state_dict(source), source
    model_name, _, weights_name = source.removeprefix(TORCHVISION_PREFIX).partition(":")
    if model_name not in SUPPORTED_MODELS:
        raise ValueError(
            f"cannot import {model_name!r}: supported torchvision detectors are {', '.join(SUPPORTED_MODELS)}"
        )
    enum_cls = get_model_weights(model_name)
    try:
        weights = enum_cls.verify(weights_name or "DEFAULT")
    except (KeyError, ValueError):
        raise ValueError(f"unknown weights {weights_name!r} for {model_name}; known: {', '.join(enum_cls.__members__)}") from None
    with downloading(weights):  # once; then from torchvision's cache
        state = weights.get_state_dict(progress=True, check_hash=True)
    return state, f"{TORCHVISION_PREFIX}{model_name}:{weights.name}"


def load_torchvision_detection(
    model: nn.Module,
    source: str | Path | Mapping[str, Tensor],
    class_map: Sequence[int] | None = None,
) -> ImportReport:
    """Load a torchvision FasterRCNN checkpoint into ``model`` (a ``frcnn.modeling.FasterRCNN``).

    Args:
        source: ``torchvision:<model>[:<weights>]``, a ``.pth`` path, or the state dict itself.
        class_map: optional; ``class_map[k - 1]`` is the checkpoint's class index (1-based, as
            torchvision's labels) for our class k. The class-specific rows are then taken from
            those classes instead of being re-initialised.
    Returns:
        an ``ImportReport``. Raises ``ValueError`` naming every missing, unexpected or mis-shaped
        key when the checkpoint does not fit the model's architecture.
    """
    if isinstance(source, Mapping):
        state, description = dict(source), "the given state dict"
    else:
        state, description = torchvision_state_dict(source)
    state = torchvision_to_ours(state)
    expected = model.state_dict()
    if "roi_heads.predictor.cls_score.weight" not in expected:
        raise ValueError(f"a torchvision FasterRCNN checkpoint loads into a FasterRCNN, not a {type(model).__name__}")

    cls_weight = state.get("roi_heads.predictor.cls_score.weight")
    if cls_weight is None or "roi_heads.predictor.bbox_pred.weight" not in state:
        raise ValueError(f"{description} has no roi_heads.box_predictor: not a torchvision FasterRCNN state dict")
    checkpoint_classes = cls_weight.shape[0] - 1
    report = ImportReport(description, checkpoint_classes=checkpoint_classes)
    num_classes = expected["roi_heads.predictor.cls_score.weight"].shape[0] - 1
    rows = _class_rows(num_classes, checkpoint_classes, class_map)
    for name in ("cls_score", "bbox_pred"):
        for param in ("weight", "bias"):
            key = f"roi_heads.predictor.{name}.{param}"
            value = state[key]
            if name == "bbox_pred":  # (4*(K+1), ...) -> (K+1, 4, ...) class-major blocks
                value = value.reshape(checkpoint_classes + 1, 4, *value.shape[1:])
            if rows is None:
                del state[key]
                report.reinitialised.append(key)
                continue
            picked = value[rows] if name == "cls_score" else value[rows[1:]]  # background only scores
            state[key] = picked.reshape(-1, *value.shape[2:]) if name == "bbox_pred" else picked

    # FrozenBatchNorm2d keeps no num_batches_tracked; BatchNorm2d does. Either side may lack it.
    state = {k: v for k, v in state.items() if k in expected or not k.endswith("num_batches_tracked")}
    problems = key_mismatches(expected, state, optional=report.reinitialised, source="checkpoint")
    if problems:
        raise ValueError(
            f"{description} does not fit this {type(model).__name__} (build it with the matching "
            f"model / backbone configs, e.g. model=faster_rcnn_fpn backbone=resnet50_fpn):{problems}"
        )
    with torch.no_grad():
        for key, value in state.items():
            expected[key].copy_(value)  # state_dict() tensors share storage with the model
    report.loaded = sorted(state)
    log.info(
        "loaded %d tensors from %s%s",
        len(report.loaded),
        description,
        f"; class layers re-initialised ({checkpoint_classes} -> {num_classes} classes)" if rows is None else "",
    )
    return report


def apply_init_from(model: nn.Module, init_from: str | Path | None) -> nn.Module:
    """The ``init_from`` config option: load ``init_from`` (see the module docstring) into the
    freshly built ``model``, or do nothing when it is None. Returns ``model``."""
    if init_from:
        load_torchvision_detection(model, init_from)
    return model


def _class_rows(num_classes: int, checkpoint_classes: int, class_map: Sequence[int] | None) -> Tensor | None:
    """Rows of the checkpoint's (K+1)-row class layers to keep, background first; None: re-initialise."""
    if class_map is not None:
        if len(class_map) != num_classes:
            raise ValueError(f"class_map has {len(class_map)} entries for a model with {num_classes} classes")
        bad = [c for c in class_map if not 1 <= int(c) <= checkpoint_classes]
        if bad:
            raise ValueError(f"class_map entries {bad} are outside the checkpoint's classes 1..{checkpoint_classes}")
        return torch.tensor([0, *[int(c) for c in class_map]])
    if num_classes == checkpoint_classes:
        return torch.arange(num_classes + 1)
    return None
