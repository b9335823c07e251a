"""Evaluation: COCO and VOC box AP, RPN proposal recall, confusion matrix and validation plots.

Inputs follow docs/contracts.md: detections `boxes` (D, 4) xyxy pixels, `scores` (D,), `labels` (D,)
int64 in 1..K; targets `boxes`, `labels`, `image_id`, `ignore_boxes`, `ignore_labels`.
The evaluators share one API: `update(preds, targets)` per batch, `compute() -> dict[str, float]`
(collective under DDP, the same dict on every rank, each image counted once), `reset()`.
"""

from frcnn.metrics.coco import COCOEvaluator, COCOResult, available_backends
from frcnn.metrics.confusion import confusion_matrix
from frcnn.metrics.plots import plot_confusion_matrix, plot_image_grid, plot_pr_curves
from frcnn.metrics.proposal_recall import ProposalRecall, proposal_recall
from frcnn.metrics.records import ImageRecord, gather_per_image, merge_per_rank
from frcnn.metrics.voc import VOCEvaluator, voc_ap

__all__ = [
    "COCOEvaluator",
    "COCOResult",
    "ImageRecord",
    "ProposalRecall",
    "VOCEvaluator",
    "available_backends",
    "confusion_matrix",
    "gather_per_image",
    "merge_per_rank",
    "plot_confusion_matrix",
    "plot_image_grid",
    "plot_pr_curves",
    "proposal_recall",
    "voc_ap",
]
