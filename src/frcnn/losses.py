"""The four losses of Faster R-CNN, as pure functions of predictions and sampled targets.

Shape shorthand: S sampled anchors / RoIs over the whole batch, F of them foreground, K classes.

Both box losses are summed over the foreground and divided by the number of *sampled* items (S),
not of foreground ones: an image with few positives then contributes a small box loss rather than
a few very loud ones, and the balance between classification and regression stays as configured.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rpn_objectness_loss(pred_logits: Tensor, gt_labels: Tensor) -> Tensor:
    """pred_logits (S,), gt_labels (S,) in {0, 1} -> scalar binary cross-entropy, mean over S."""
    if pred_logits.numel() == 0:
        return pred_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(pred_logits.float(), gt_labels.float())


def box_regression_loss(pred_deltas: Tensor, gt_deltas: Tensor, num_sampled: int, beta: float) -> Tensor:
    """pred_deltas (F, 4), gt_deltas (F, 4) -> scalar smooth L1 summed over F, divided by S.

    ``beta`` is where smooth L1 turns from quadratic into linear (the seed's sigma: beta = 1/sigma^2;
    1/9 for the RPN as in the paper's code, 1.0 for the R-CNN).
    """
    if pred_deltas.numel() == 0:
        return pred_deltas.sum() * 0.0
    loss = F.smooth_l1_loss(pred_deltas.float(), gt_deltas.float(), beta=beta, reduction="sum")
    return loss / max(num_sampled, 1)


def rcnn_classification_loss(pred_class_logits: Tensor, gt_classes: Tensor) -> Tensor:
    """pred_class_logits (S, K+1), gt_classes (S,) int64 in 0..K -> scalar cross-entropy, mean over S."""
    if pred_class_logits.numel() == 0:
        return pred_class_logits.sum() * 0.0
    return F.cross_entropy(pred_class_logits.float(), gt_classes)


def select_class_deltas(pred_deltas: Tensor, classes: Tensor) -> Tensor:
    """pred_deltas (R, 4*K) class-specific, classes (R,) int64 in 1..K -> (R, 4): each row's class."""
    R = pred_deltas.shape[0]
    per_class = pred_deltas.reshape(R, pred_deltas.shape[1] // 4, 4)  # (R, 4*K) -> (R, K, 4)
    return per_class[torch.arange(R, device=pred_deltas.device), classes - 1]
