"""The seed's standalone RPN as a detector: for a single class, objectness is the final score.

    images -> InputTransform -> backbone -> RPN -> proposals = detections (score = sigmoid(objectness))
                                               \\-> loss_rpn_cls, loss_rpn_reg
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from frcnn.modeling.boxes import validate_targets
from frcnn.modeling.detector import build_first_stage
from frcnn.modeling.errors import IncompatibleParts
from frcnn.modeling.output import DetectorOutput, weighted_total
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform


class RPNDetector(nn.Module):
    """Trained and evaluated through the same interface as ``FasterRCNN``; its losses are
    ``loss_rpn_cls`` and ``loss_rpn_reg``; its detections are the proposals (test-time NMS and
    top-n from the RPN's settings) with ``scores = sigmoid(objectness)`` and label 1.
    Arguments as ``FasterRCNN``'s; ``num_classes`` must be 1.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int = 1,
        rpn: Callable[..., RegionProposalNetwork] = RegionProposalNetwork,
        transform: Callable[..., InputTransform] = InputTransform,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if num_classes != 1:
            raise IncompatibleParts(
                f"the standalone RPN detects a single class (objectness is its score); the data has {num_classes}"
            )
        build_first_stage(self, backbone, num_classes, rpn, transform, loss_weights)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool | None = None,
    ) -> DetectorOutput:
        """As ``FasterRCNN.forward``."""
        if return_detections is None:
            return_detections = not self.training
        if targets is not None:
            validate_targets(targets, [tuple(image.shape[-2:]) for image in images], self.num_classes)
        batch = self.transform(images, targets)
        features = self.backbone(batch.take_tensor())  # the padded input is freed once used
        rpn = self.rpn(features, batch.image_sizes, batch.padded_size, batch.targets)
        proposals = batch.to_original(rpn.proposals.boxes)
        detections = None
        if return_detections:
            detections = [
                {"boxes": boxes, "scores": torch.sigmoid(logits), "labels": torch.ones_like(logits, dtype=torch.int64)}
                for boxes, logits in zip(proposals, rpn.proposals.logits)
            ]
        return DetectorOutput(weighted_total(rpn.losses, self.loss_weights), detections, proposals)
