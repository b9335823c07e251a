"""One rename table between torchvision's ``FasterRCNN`` state dicts and ours, both directions.

    torchvision                              ours
    rpn.head.conv.0.0.*                      rpn.head.conv.*
    rpn.head.cls_logits.*                    rpn.head.objectness.*
    rpn.head.bbox_pred.*                     rpn.head.deltas.*
    roi_heads.box_head.fc6.* / fc7.*         roi_heads.box_head.fc1.* / fc2.*
    roi_heads.box_predictor.cls_score.*      roi_heads.predictor.cls_score.*  (K+1 rows, 0 = background, both)
    roi_heads.box_predictor.bbox_pred.*      roi_heads.predictor.bbox_pred.*  (4*(K+1) rows there, 4*K here:
                                                                              no background block)

The backbone (``backbone.body.*``, ``backbone.fpn.*``) has torchvision's names on both sides.
``frcnn.interop.torchvision_import`` reads checkpoints with it; ``frcnn.interop.torchvision_twin``
writes our weights into a torchvision model with it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

# torchvision name prefix -> ours, in the order they are tried
TORCHVISION_TO_OURS = (
    ("rpn.head.conv.0.0.", "rpn.head.conv."),
    ("rpn.head.cls_logits.", "rpn.head.objectness."),
    ("rpn.head.bbox_pred.", "rpn.head.deltas."),
    ("roi_heads.box_head.fc6.", "roi_heads.box_head.fc1."),
    ("roi_heads.box_head.fc7.", "roi_heads.box_head.fc2."),
    ("roi_heads.box_predictor.cls_score.", "roi_heads.predictor.cls_score."),
    ("roi_heads.box_predictor.bbox_pred.", "roi_heads.predictor.bbox_pred."),
)
# Checkpoints older than torchvision's RPNHead version 2 name the conv ``rpn.head.conv.*``: already ours.
BBOX_PRED = "roi_heads.predictor.bbox_pred."


def _rename(key: str, table: tuple[tuple[str, str], ...]) -> str:
    for old, new in table:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def torchvision_to_ours(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """torchvision ``FasterRCNN`` keys -> ours; values untouched (``bbox_pred`` keeps its K+1 blocks,
    which the importer selects from). A ``module.`` prefix (DDP) is dropped; unknown keys pass as they are."""
    return {_rename(key.removeprefix("module."), TORCHVISION_TO_OURS): value for key, value in state.items()}


def ours_to_torchvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our ``FasterRCNN`` state dict -> torchvision's, loadable into a ``torchvision.models.detection
    .FasterRCNN`` of the same architecture: keys renamed, and a zero background block put in front of
    the class-specific deltas (torchvision predicts deltas for background too and never uses them)."""
    inverse = tuple((new, old) for old, new in TORCHVISION_TO_OURS)
    out = {}
    for key, value in state.items():
        if key.startswith(BBOX_PRED):  # (4*K, ...) -> (4*(K+1), ...)
            value = torch.cat((value.new_zeros((4, *value.shape[1:])), value))
        out[_rename(key, inverse)] = value
    return out
