"""``ExportableDetector``: a trained ``FasterRCNN`` / ``RPNDetector`` as one graph with static ranks.

    images (N, 3, H, W) in [0, 1] -> normalise, resize, pad -> backbone -> RPN proposals (N, P)
        -> R-CNN detections -> boxes (M, 4), scores (M,), labels (M,), batch_index (M,)

It computes the eager model's evaluation forward on a batch of images of one size (the exported
contract: N, H and W dynamic), reading only the model's public parts (``transform``'s sizes and
statistics, ``backbone``, ``rpn`` and ``roi_heads`` with their settings). Boxes come back in the
input's pixels; detections are grouped by image and sorted by score within an image, as the eager
``detections`` list is. An image without detections has no rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frcnn.export.detections import rcnn_detections
from frcnn.export.proposals import rpn_proposals
from frcnn.export.resize import bilinear_resize, pad_to_multiple, resized_size
from frcnn.modeling import FasterRCNN, RPNDetector
from frcnn.modeling.backbone import feature_strides
from frcnn.modeling.rpn import feature_levels

OUTPUT_NAMES = ("boxes", "scores", "labels", "batch_index")


class ExportError(ValueError):
    """A model, checkpoint or setting that cannot be exported; the message says which and why."""


def check_exportable(model: nn.Module) -> None:
    """Raises ``ExportError`` for what the export graph does not reproduce exactly."""
    if not isinstance(model, FasterRCNN | RPNDetector):
        raise ExportError(f"only FasterRCNN and RPNDetector models export, got {type(model).__name__}")
    transform = model.transform
    if transform.image_mean is None or transform.image_std is None or transform.size_divisible is None:
        raise ExportError("the model's transform has no image_mean / image_std / size_divisible")
    rpn = model.rpn
    for key in ("pre_nms_top_n", "post_nms_top_n"):
        if "test" not in getattr(rpn, key):
            raise ExportError(f"rpn.{key} has no 'test' entry")


class ExportableDetector(nn.Module):
    """Wraps ``model`` (not copied: its modules are shared) for ``torch.export``.

    forward(images (N, 3, H, W) float32 in [0, 1]) -> (boxes (M, 4) float32 xyxy in input pixels,
    scores (M,) float32, labels (M,) int64 in 1..K, batch_index (M,) int64).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        check_exportable(model)
        self.model = model.eval()
        transform = model.transform
        self.min_size = int(transform.test_min_size)  # the evaluation size (multi-scale training draws others)
        self.max_size = int(transform.max_size)
        self.size_divisible = int(transform.size_divisible)
        self.register_buffer("image_mean", torch.tensor(transform.image_mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(transform.image_std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        H, W = images.shape[-2], images.shape[-1]
        h, w = resized_size(H, W, self.min_size, self.max_size)
        batch = pad_to_multiple(bilinear_resize((images - self.image_mean) / self.image_std, h, w), self.size_divisible)
        padded_h, padded_w = batch.shape[-2], batch.shape[-1]
        image_h = torch.full((), h, dtype=torch.float32, device=images.device)
        image_w = torch.full((), w, dtype=torch.float32, device=images.device)

        features = self.model.backbone(batch)
        proposals, logits = rpn_proposals(self.model.rpn, feature_levels(features), padded_h, padded_w, image_h, image_w)
        if isinstance(self.model, RPNDetector):
            boxes, scores, labels, batch_index = self._rpn_detections(proposals, logits)
        else:
            strides = feature_strides(self.model.backbone)
            boxes, scores, labels, batch_index = rcnn_detections(
                self.model.roi_heads, features, strides, proposals, logits, image_h, image_w
            )
        # resized -> input pixels: the eager map_back's ratios, a double quotient rounded to float32
        ratio_h = torch.full((), H / h, dtype=torch.float64, device=images.device).float()
        ratio_w = torch.full((), W / w, dtype=torch.float64, device=images.device).float()
        return boxes * torch.stack((ratio_w, ratio_h, ratio_w, ratio_h)), scores, labels, batch_index

    @staticmethod
    def _rpn_detections(proposals: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The standalone RPN's detections: every proposal, score sigmoid(objectness), label 1."""
        N, P = logits.shape
        found = torch.isfinite(logits).reshape(-1).nonzero()[:, 0]  # (M,)
        scores = torch.sigmoid(logits.reshape(-1)[found])
        return proposals.reshape(-1, 4)[found], scores, torch.ones_like(found), found // P
