"""FPN detectors built from the real configs, and their torchvision counterparts, for parity tests.

Nothing downloads: torchvision's models are built with ``weights=None`` and a fixed seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn, fasterrcnn_resnet50_fpn

from frcnn.layers.batchnorm import calibrate_batchnorm
from frcnn.modeling import FasterRCNN

REPO = Path(__file__).resolve().parents[2]

# arch -> (our model config, our backbone config, torchvision builder)
ARCHS = {
    "resnet50_fpn": ("faster_rcnn_fpn", "resnet50_fpn", fasterrcnn_resnet50_fpn),
    "mobilenet_v3_large_fpn": ("faster_rcnn_fpn_mobilenet", "mobilenet_v3_large_fpn", fasterrcnn_mobilenet_v3_large_fpn),
}


def composed(arch: str, overrides: list[str] = ()):
    """The composed train config of ``arch`` (as train.py sees it)."""
    model, backbone, _ = ARCHS[arch]
    os.environ.setdefault("PROJECT_ROOT", str(REPO))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["~experiment", f"model={model}", f"backbone={backbone}", "backbone.weights=null", *overrides],
        )
    return cfg


def build_ours(arch: str, overrides: list[str] = ()) -> tuple[FasterRCNN, str | None]:
    """Our detector from the configs, and ``init_from`` (which train.py applies after building)."""
    cfg = composed(arch, overrides)
    return instantiate(OmegaConf.to_container(cfg.model, resolve=True), _convert_="all"), cfg.get("init_from")


def build_torchvision(arch: str, images: list[torch.Tensor], seed: int = 0, **kwargs) -> nn.Module:
    """torchvision's detector with random weights made informative, in eval mode.

    Untrained, its outputs are degenerate (all features ~0 or all scores equal), which would make
    a comparison vacuous. So: BatchNorm statistics are those of ``images`` (calibration), the FPN
    outputs are scaled to unit spread, and the RPN head and box predictor are redrawn wider, so that
    objectness, deltas and class scores vary from box to box.
    """
    torch.manual_seed(seed)
    model = ARCHS[arch][2](weights=None, weights_backbone=None, **kwargs)
    g = torch.Generator().manual_seed(seed + 1)
    batch = model.transform(images)[0].tensors
    calibrate_batchnorm(model.backbone, batch, freeze=False)
    with torch.no_grad():
        model.eval()
        spread = torch.cat([f.flatten() for f in model.backbone(batch).values()]).std()
        for p in model.backbone.fpn.layer_blocks.parameters():
            p /= spread
        stds = {
            "rpn.head.conv.0.0": 0.02,
            "rpn.head.cls_logits": 0.2,
            "rpn.head.bbox_pred": 0.01,
            "roi_heads.box_predictor.cls_score": 0.3,
            "roi_heads.box_predictor.bbox_pred": 0.01,
        }
        for name, p in model.named_parameters():
            layer, kind = name.rsplit(".", 1)
            if layer in stds:
                p.copy_(torch.randn(p.shape, generator=g) * (stds[layer] if kind == "weight" else 0.1))
    return model
