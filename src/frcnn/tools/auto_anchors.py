"""Anchors fitted to the data: ``model.rpn.anchor_generator.sizes=auto`` (and / or ``aspect_ratios=auto``).

Before the model is built, ``src/train.py`` runs the anchor coverage suggestion
(``frcnn.tools.anchor_coverage.suggest_anchors``) on the training boxes, resized as the model resizes
its images (at the evaluation size ``test_min_size``), and writes the chosen sizes / ratios into the
model config. So the run's log, its logged hyperparameters (``anchor_fit``: coverage before and after)
and the checkpoint's ``model_config`` hold the chosen anchors, and eval.py, predict.py and export.py
rebuild the same model. ``auto`` starts from ``START_SIZES`` x ``START_RATIOS`` (torchvision's
single-map set) and keeps their count; a value given as numbers is kept and only the other is fitted.
Single-map models only (one anchor list; FPN models give one size per level).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from omegaconf import DictConfig, open_dict

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.tools.anchor_coverage import coverage_table, measure_coverage, suggest_anchors

log = logging.getLogger(__name__)

AUTO = "auto"
START_SIZES = (32.0, 64.0, 128.0, 256.0, 512.0)
START_RATIOS = (0.5, 1.0, 2.0)


@dataclass
class AnchorFit:
    """The fitted anchors and the fraction of training boxes with an anchor at IoU >= the RPN's
    foreground threshold, with the starting anchors (before) and the fitted ones (after)."""

    sizes: list[float]
    aspect_ratios: list[float]
    coverage_before: float
    coverage_after: float
    boxes: int
    start_sizes: list[float]
    start_aspect_ratios: list[float]


def wants_fit(anchor_config: Mapping) -> bool:
    return anchor_config.get("sizes") == AUTO or anchor_config.get("aspect_ratios") == AUTO


def start_generator(anchor_config: Mapping) -> AnchorGenerator:
    """The anchors a fit starts from: the configured values, ``START_*`` where they say ``auto``."""
    sizes, ratios = anchor_config.get("sizes"), anchor_config.get("aspect_ratios")
    return AnchorGenerator(START_SIZES if sizes == AUTO else sizes, START_RATIOS if ratios == AUTO else ratios,
                           float(anchor_config.get("offset", 0.0)))


def evaluation_size(transform_config: Mapping) -> tuple[int, int]:
    """(shorter side, longer-side cap) the model evaluates at: ``test_min_size``, else the last ``min_size``."""
    min_size = transform_config.get("test_min_size") or transform_config["min_size"]
    min_size = min_size if isinstance(min_size, int | float) else list(min_size)[-1]
    return int(min_size), int(transform_config["max_size"])


def fit_anchors(boxes_per_image: list[torch.Tensor], image_sizes: list[tuple[int, int]], anchor_config: Mapping,
                stride: int, min_size: int, max_size: int, fg_threshold: float) -> AnchorFit:
    """Boxes (G_i, 4) in original pixels of images (h, w) -> the fitted anchors and their coverage."""
    start = start_generator(anchor_config)
    sizes, ratios = suggest_anchors(boxes_per_image, image_sizes, start, stride, min_size, max_size, fg_threshold,
                                    fit_sizes=anchor_config.get("sizes") == AUTO,
                                    fit_ratios=anchor_config.get("aspect_ratios") == AUTO)
    fitted = AnchorGenerator(sizes, ratios, start.offset)
    before, after = (coverage_table(measure_coverage(boxes_per_image, image_sizes, generator, stride, min_size,
                                                     max_size), fg_threshold) for generator in (start, fitted))
    return AnchorFit(list(sizes), list(ratios), before["covered"], after["covered"], before["boxes"],
                     list(start.sizes), list(start.aspect_ratios))


def resolve_auto_anchors(cfg: DictConfig, datamodule) -> AnchorFit | None:
    """With ``sizes=auto`` / ``aspect_ratios=auto``: fit them on ``datamodule``'s training split and
    write them into ``cfg.model.rpn.anchor_generator`` (and the report into ``cfg.anchor_fit``)."""
    anchor_config = cfg.model.rpn.anchor_generator
    if not wants_fit(anchor_config):
        return None
    sizes = anchor_config.get("sizes")
    if sizes != AUTO and len(sizes) and not isinstance(sizes[0], int | float):
        raise ValueError("model.rpn.anchor_generator: aspect_ratios=auto needs one list of sizes; per-level sizes "
                         "(FPN models) are not fitted")
    from hydra.utils import instantiate

    datamodule.prepare_data()
    datamodule.setup("fit")
    records = datamodule.datasets["train"].records
    missing = [str(r.path) for r in records if r.height is None or r.width is None]
    if missing:
        raise ValueError(f"anchors=auto needs every training image's size; unknown for {missing[:3]} "
                         f"({len(missing)} images): set data.check_images=header")
    boxes = [torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4) for r in records]
    image_sizes = [(int(r.height), int(r.width)) for r in records]
    with warnings.catch_warnings():  # only its stride is read: no weights, nothing to warn about
        warnings.simplefilter("ignore")
        stride = instantiate(cfg.backbone, weights=None, weights_path=None).stride
    min_size, max_size = evaluation_size(cfg.model.transform)
    fg = float(cfg.model.rpn.matcher.fg_iou_threshold)
    fit = fit_anchors(boxes, image_sizes, anchor_config, stride, min_size, max_size, fg)
    log.info("anchors fitted to %d training boxes (at %d / %d px, stride %d): sizes %s x ratios %s; boxes with an "
             "anchor at IoU >= %g: %.1f%% with %s x %s, %.1f%% with the fitted ones", fit.boxes, min_size, max_size,
             stride, fit.sizes, fit.aspect_ratios, fg, 100 * fit.coverage_before, fit.start_sizes,
             fit.start_aspect_ratios, 100 * fit.coverage_after)
    anchor_config.sizes, anchor_config.aspect_ratios = fit.sizes, fit.aspect_ratios
    with open_dict(cfg):
        cfg.anchor_fit = asdict(fit)
    return fit
