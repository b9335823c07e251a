"""bench/gpu.py's models: torchvision's ``fasterrcnn_resnet50_fpn`` (random weights, BatchNorm
calibrated on synthetic images, then frozen, as a pretrained trunk's would be) and ours built from
``model=faster_rcnn_fpn backbone=resnet50_fpn`` with the same weights imported
(``frcnn.interop.torchvision_import``), and the synthetic batches both see."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from frcnn.interop.torchvision_import import load_torchvision_detection
from frcnn.layers.batchnorm import calibrate_batchnorm
from frcnn.tools.compose import compose_project_config

NUM_CLASSES = 90  # torchvision's COCO head: 91 outputs with background


def synthetic_batch(n: int, height: int, width: int, seed: int, device: torch.device):
    """-> n images (3, H, W) in [0, 1] with 3-6 filled rectangles each, and their targets."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        image = 0.3 + 0.2 * torch.rand(3, 1, 1, generator=g) * torch.linspace(0, 1, width)[None, None]
        image = image.expand(3, height, width).clone()
        count = int(torch.randint(3, 7, (), generator=g))
        wh = (0.05 + 0.3 * torch.rand(count, 2, generator=g)) * torch.tensor([width, height])
        xy = torch.rand(count, 2, generator=g) * (torch.tensor([width, height]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1).round()
        for x1, y1, x2, y2 in boxes.long().tolist():
            image[:, y1:y2, x1:x2] = torch.rand(3, 1, 1, generator=g)
        images.append(image.to(device))
        targets.append({"boxes": boxes.to(device), "labels": torch.randint(1, NUM_CLASSES + 1, (count,), generator=g).to(device)})
    return images, targets


def build_pair(min_size: int, max_size: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """-> (ours, torchvision's), same weights, both in training mode on ``device``."""
    torch.manual_seed(0)
    theirs = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                                     trainable_backbone_layers=3, min_size=min_size, max_size=max_size)
    images, _ = synthetic_batch(2, min_size, max_size, seed=99, device=torch.device("cpu"))
    calibrate_batchnorm(theirs.backbone, theirs.transform(images)[0].tensors, freeze=True)
    cfg = compose_project_config(["~experiment", "model=faster_rcnn_fpn", "backbone=resnet50_fpn",
                                  "backbone.weights=null", f"data.num_classes={NUM_CLASSES}",
                                  f"model.transform.min_size={min_size}", f"model.transform.max_size={max_size}"])
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    ours = instantiate(OmegaConf.to_container(cfg.model, resolve=True), _convert_="all")
    load_torchvision_detection(ours, theirs.state_dict())
    return ours.to(device).train(), theirs.to(device).train()


def agreement(ours: nn.Module, theirs: nn.Module, images: list[Tensor]) -> str:
    """How close the two models' detections are on ``images`` (eval mode, float32), matched by
    position: each of our boxes to the nearest of theirs with the same label."""
    with torch.inference_mode():
        mine, other = ours.eval()(images).detections, theirs.eval()(images)
    ours.train(), theirs.train()
    close = total = 0
    worst_score = 0.0
    for a, b in zip(mine, other):
        total += len(a["boxes"])
        if not len(a["boxes"]) or not len(b["boxes"]):
            continue
        distance = (a["boxes"][:, None] - b["boxes"][None]).abs().amax(-1)
        distance[a["labels"][:, None] != b["labels"][None]] = float("inf")
        gap, index = distance.min(dim=1)
        hit = gap <= 0.05
        close += int(hit.sum())
        if hit.any():
            worst_score = max(worst_score, float((a["scores"][hit] - b["scores"][index[hit]]).abs().max()))
    return f"{close} / {total} of our detections within 0.05 px of one of torchvision's (same class), max |score diff| {worst_score:.2g}"
