"""Building the detector from config, with one clear message when its parts do not fit together."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from frcnn.interop.torchvision_import import apply_init_from
from frcnn.modeling import IncompatibleParts

HINT = (
    "Multi-level models take pyramid backbones: model=faster_rcnn_fpn with backbone=resnet50_fpn, "
    "model=faster_rcnn_fpn_mobilenet with backbone=mobilenet_v3_large_fpn; the single-map backbones "
    "(tiny, vgg16, resnet*, mobilenet_v2, ...) take model=faster_rcnn, or model=rpn_only for one class."
)


class ConfigError(ValueError):
    """The composed config cannot work; the message names the config groups to change."""


def _incompatible(error: BaseException) -> IncompatibleParts | None:
    while error is not None:
        if isinstance(error, IncompatibleParts):
            return error
        error = error.__cause__
    return None


def build_model(model_config: DictConfig | Mapping, init_from: str | Path | None = None,
                choices: Mapping[str, str] | None = None):
    """Instantiate the detector from ``cfg.model``, then load ``init_from`` (a torchvision COCO
    checkpoint name or a local ``.pth``; ``frcnn.interop.torchvision_import``) when it is set.

    ``choices``: the config groups' selected options (``HydraConfig.get().runtime.choices``), named
    in the ``ConfigError`` raised when the model's parts do not fit the backbone or the data.
    """
    if not isinstance(model_config, DictConfig):
        model_config = OmegaConf.create(dict(model_config))
    config = OmegaConf.to_container(model_config, resolve=True)
    try:
        model = hydra.utils.instantiate(config, _convert_="all")
    except (InstantiationException, IncompatibleParts) as error:
        cause = _incompatible(error)
        if cause is None:
            raise
        picked = ", ".join(f"{group}={(choices or {}).get(group, '?')}" for group in ("model", "backbone", "data"))
        raise ConfigError(f"{picked} do not fit together: {cause}. Change one of these config groups. {HINT}") from cause
    return apply_init_from(model, init_from)
