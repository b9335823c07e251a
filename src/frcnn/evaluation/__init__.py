"""Evaluation: COCO and VOC box AP, RPN proposal recall, the confusion matrix and its plots.

Inputs follow docs/contracts.md: detections `boxes` (D, 4) xyxy pixels, `scores` (D,), `labels` (D,)
int64 in 1..K; targets `boxes`, `labels`, `image_id`, `ignore_boxes`, `ignore_labels`.
The evaluators share one API: `update(preds, targets)` per batch, `compute() -> dict[str, float]`
(collective under DDP, the same dict on every rank, each image counted once), `reset()`.
Nothing here imports training code.
"""

from frcnn.evaluation.coco import COCOEvaluator
from frcnn.evaluation.coco_backend import available_backends
from frcnn.evaluation.coco_result import COCOResult
from frcnn.evaluation.confusion import confusion_matrix, image_confusion
from frcnn.evaluation.per_image import EvalRecord, gather_per_image, merge_per_rank
from frcnn.evaluation.plots import plot_confusion_matrix, plot_pr_curves
from frcnn.evaluation.proposal_recall import ProposalRecall, proposal_recall
from frcnn.evaluation.voc import VOCEvaluator, voc_ap

__all__ = [
    "COCOEvaluator",
    "COCOResult",
    "EvalRecord",
    "ProposalRecall",
    "VOCEvaluator",
    "available_backends",
    "confusion_matrix",
    "gather_per_image",
    "image_confusion",
    "merge_per_rank",
    "plot_confusion_matrix",
    "plot_pr_curves",
    "proposal_recall",
    "voc_ap",
]
