"""The box regression loss both stages share, and why it is normalised as it is.

Shape shorthand: S sampled anchors / RoIs over the whole batch, F of them foreground.

The box loss is summed over the foreground and divided by the number of *sampled* items (S), not of
foreground ones: an image with few positives then contributes a small box loss rather than a few
very loud ones, and the balance between classification and regression stays as configured. The
stage-specific losses live beside their targets: ``frcnn.modeling.rpn.losses`` (objectness) and
``frcnn.modeling.roi_heads.losses`` (classes, class-specific deltas).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def box_regression_loss(pred_deltas: Tensor, gt_deltas: Tensor, num_sampled: int, beta: float) -> Tensor:
    """pred_deltas (F, 4), gt_deltas (F, 4) -> scalar smooth L1 summed over F, divided by S.

    ``beta`` is where smooth L1 turns from quadratic into linear (the seed's sigma: beta = 1/sigma^2;
    1/9 for the RPN as in the paper's code, 1.0 for the R-CNN).
    """
    if pred_deltas.numel() == 0:
        return pred_deltas.sum() * 0.0
    loss = F.smooth_l1_loss(pred_deltas.float(), gt_deltas.float(), beta=beta, reduction="sum")
    return loss / max(num_sampled, 1)
