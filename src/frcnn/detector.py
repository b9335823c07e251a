"""The detector: one forward that yields the four losses and the detections.

    images -> InputTransform -> backbone -> RPN -> proposals -> RoI heads -> detections
                                               \\-> loss_rpn_cls, loss_rpn_reg   \\-> loss_cls, loss_box_reg

Boxes follow ``frcnn.boxes``; the batch contract is in docs/contracts.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from frcnn.boxes import validate_targets
from frcnn.roi_heads import RoIHeads
from frcnn.rpn import RegionProposalNetwork
from frcnn.transform import InputTransform

LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg")


@dataclass
class DetectorOutput:
    """What a forward returns, in training and in evaluation alike.

    losses: the computed losses by their fixed names plus ``loss``, their weighted sum (empty
        without targets).
    detections: per image ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) int64 in 1..K, in the
        input image's pixels; None when not asked for.
    proposals: per image the RPN proposals (P, 4) in the input image's pixels, best first.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    detections: list[dict[str, Tensor]] | None = None
    proposals: list[Tensor] = field(default_factory=list)


def weighted_total(losses: dict[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """Adds ``loss``, the weighted sum of ``losses``, to a copy of it."""
    if not losses:
        return {}
    out = dict(losses)
    out["loss"] = sum(weights.get(name, 1.0) * value for name, value in losses.items())
    return out


def feature_strides(backbone: nn.Module) -> int | dict[str, int]:
    """The stride of a single-map backbone, or ``{name: stride}`` of a multi-level one (an FPN)."""
    strides = getattr(backbone, "strides", None)
    return dict(strides) if strides is not None else int(backbone.stride)


def _drop_c5(backbone: nn.Module) -> None:
    if getattr(backbone, "c5", None) is not None:
        backbone.c5 = None


class _TwoStageBase(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        rpn: Callable[..., RegionProposalNetwork],
        transform: InputTransform | None,
        loss_weights: Mapping[str, float] | None,
        num_classes: int,
    ) -> None:
        super().__init__()
        unknown = set(loss_weights or {}) - set(LOSS_NAMES)
        if unknown:
            raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; the losses are {LOSS_NAMES}")
        self.backbone = backbone
        self.num_classes = num_classes
        self.transform = transform or InputTransform()
        if self.transform.size_divisible is None:
            # An FPN names the multiple its levels need (32, as torchvision pads); a single map its stride.
            self.transform.size_divisible = getattr(backbone, "size_divisible", None) or backbone.stride
        if self.transform.image_mean is None:
            self.transform.image_mean = tuple(backbone.image_mean)
        if self.transform.image_std is None:
            self.transform.image_std = tuple(backbone.image_std)
        self.rpn = rpn(in_channels=backbone.out_channels)
        self.loss_weights = {name: float((loss_weights or {}).get(name, 1.0)) for name in LOSS_NAMES}

    def _prepare(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None):
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        if targets is not None:
            validate_targets(targets, original_sizes, self.num_classes)
        batch, image_sizes, targets = self.transform(images, targets)
        features = self.backbone(batch)
        proposals, proposal_logits, rpn_losses = self.rpn(features, image_sizes, tuple(batch.shape[-2:]), targets)
        return original_sizes, image_sizes, targets, features, proposals, proposal_logits, rpn_losses

    def _map_back(self, boxes: Sequence[Tensor], image_sizes, original_sizes) -> list[Tensor]:
        return [self.transform.map_back(b, s, o) for b, s, o in zip(boxes, image_sizes, original_sizes)]


class FasterRCNN(_TwoStageBase):
    """Faster R-CNN with the seed's defaults.

    Args:
        backbone: a ``frcnn.backbones.Backbone`` (``out_channels``, ``stride``, ``image_mean``/``std``),
            or a ``frcnn.backbones.FPNBackbone`` (several maps, ``strides`` by name); the RPN, the
            anchors and the RoI pooler configured for it (``conf/model/faster_rcnn_fpn.yaml``).
        num_classes: K, without background.
        rpn: factory ``(in_channels=) -> RegionProposalNetwork`` (a Hydra partial or the class).
        roi_heads: factory ``(backbone=, num_classes=) -> RoIHeads``.
        transform: the input transform (resize 600 / 1000 by default).
        loss_weights: weight of each of ``LOSS_NAMES`` in the total (1.0 when missing).

    Example::

        model = FasterRCNN(build_backbone("vgg16", weights="DEFAULT"), num_classes=20).eval()
        detections = model([image]).detections[0]   # boxes, scores, labels
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        rpn: Callable[..., RegionProposalNetwork] = RegionProposalNetwork,
        roi_heads: Callable[..., RoIHeads] = RoIHeads,
        transform: InputTransform | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(backbone, rpn, transform, loss_weights, num_classes)
        self.roi_heads = roi_heads(backbone=backbone, num_classes=num_classes)
        # A ResNet's conv5 stage belongs to the R-CNN head when the head uses it (the C4 design)
        # and to nobody otherwise; left on the backbone it would hold parameters that never get a
        # gradient, which DDP rejects.
        _drop_c5(backbone)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool | None = None,
    ) -> DetectorOutput:
        """images: list of (3, H_i, W_i) float in [0, 1]; targets: list of ``boxes`` (G_i, 4),
        ``labels`` (G_i,). Losses when targets are given; detections when not training, or when
        ``return_detections`` says so."""
        if return_detections is None:
            return_detections = not self.training
        original_sizes, image_sizes, targets, features, proposals, _, rpn_losses = self._prepare(images, targets)
        detections, roi_losses = self.roi_heads(
            features, proposals, image_sizes, feature_strides(self.backbone), targets, return_detections
        )
        if detections is not None:
            for det, size, orig in zip(detections, image_sizes, original_sizes):
                det["boxes"] = self.transform.map_back(det["boxes"], size, orig)
        return DetectorOutput(
            losses=weighted_total({**rpn_losses, **roi_losses}, self.loss_weights),
            detections=detections,
            proposals=self._map_back(proposals, image_sizes, original_sizes),
        )


class RPNDetector(_TwoStageBase):
    """The seed's standalone RPN: for a single class, objectness is the final score.

    Trained and evaluated through the same interface as ``FasterRCNN``; its losses are
    ``loss_rpn_cls`` and ``loss_rpn_reg``; its detections are the proposals (test-time NMS and
    top-n from the RPN's settings) with ``scores = sigmoid(objectness)`` and label 1.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 1,
        rpn: Callable[..., RegionProposalNetwork] = RegionProposalNetwork,
        transform: InputTransform | None = None,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        if num_classes != 1:
            raise ValueError(
                f"the standalone RPN detects a single class (objectness is its score); got num_classes={num_classes}"
            )
        super().__init__(backbone, rpn, transform, loss_weights, num_classes)
        _drop_c5(backbone)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool | None = None,
    ) -> DetectorOutput:
        if return_detections is None:
            return_detections = not self.training
        original_sizes, image_sizes, _, _, proposals, logits, losses = self._prepare(images, targets)
        proposals = self._map_back(proposals, image_sizes, original_sizes)
        detections = None
        if return_detections:
            detections = [
                {"boxes": p, "scores": torch.sigmoid(s), "labels": torch.ones_like(s, dtype=torch.int64)}
                for p, s in zip(proposals, logits)
            ]
        return DetectorOutput(weighted_total(losses, self.loss_weights), detections, proposals)
