"""R-CNN losses: multi-class cross-entropy, and smooth L1 on the deltas of each RoI's true class.

Shape shorthand: S sampled RoIs over the batch, F of them foreground, K classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from frcnn.modeling.losses import box_regression_loss


def rcnn_classification_loss(pred_class_logits: Tensor, gt_classes: Tensor) -> Tensor:
    """pred_class_logits (S, K+1), gt_classes (S,) int64 in 0..K -> scalar cross-entropy, mean over S."""
    if pred_class_logits.numel() == 0:
        return pred_class_logits.sum() * 0.0
    return F.cross_entropy(pred_class_logits.float(), gt_classes)


def select_class_deltas(pred_deltas: Tensor, classes: Tensor) -> Tensor:
    """pred_deltas (R, 4*K) class-specific, classes (R,) int64 in 1..K -> (R, 4): each row's class.

    Class k's deltas are columns 4(k-1) .. 4k-1 (no background block): as the seed says, only the
    prediction for the correct class enters the loss.
    """
    R = pred_deltas.shape[0]
    per_class = pred_deltas.reshape(R, pred_deltas.shape[1] // 4, 4)  # (R, 4*K) -> (R, K, 4)
    return per_class[torch.arange(R, device=pred_deltas.device), classes - 1]


def rcnn_losses(
    pred_class_logits: Tensor, pred_deltas: Tensor, gt_classes: Tensor, gt_deltas: Tensor, smooth_l1_beta: float
) -> dict[str, Tensor]:
    """(S, K+1), (S, 4*K), (S,), (S, 4) -> ``loss_cls`` over all S, ``loss_box_reg`` over the
    foreground's class-specific deltas, divided by S (``frcnn.modeling.losses``)."""
    fg = gt_classes > 0
    return {
        "loss_cls": rcnn_classification_loss(pred_class_logits, gt_classes),
        "loss_box_reg": box_regression_loss(
            select_class_deltas(pred_deltas[fg], gt_classes[fg]),
            gt_deltas[fg],
            num_sampled=gt_classes.numel(),
            beta=smooth_l1_beta,
        ),
    }
