"""Checkpoints written before the tree redesign (issue 10) still load: their stored configs, rewritten.

A checkpoint stores the resolved model and data configs it was trained with (``hparams.model_config``,
``hparams.data_config``), whose ``_target_`` strings name the module layout of its day. ``migrate``
rewrites a stored config to today's layout:

- every ``_target_`` of the old flat layout (``frcnn.detector.FasterRCNN``, ``frcnn.rpn...``) is
  renamed by ``RENAMED_TARGETS``;
- the input transform became a factory the detector calls with its backbone (``_partial_: true``);
- ``init_from`` left the model's constructor tree (a top-level option now): dropped, since a
  checkpoint's weights replace whatever training started from.

The state-dict keys did not change, so weights, optimizer state and loop state load as they are
(``tests/app/test_legacy_checkpoint.py``, on a checkpoint written by the old code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RENAMED_TARGETS = {
    "frcnn.detector.FasterRCNN": "frcnn.modeling.FasterRCNN",
    "frcnn.detector.RPNDetector": "frcnn.modeling.RPNDetector",
    "frcnn.transform.InputTransform": "frcnn.modeling.transform.InputTransform",
    "frcnn.rpn.RegionProposalNetwork": "frcnn.modeling.rpn.RegionProposalNetwork",
    "frcnn.anchors.AnchorGenerator": "frcnn.modeling.anchors.AnchorGenerator",
    "frcnn.boxes.BoxCoder": "frcnn.modeling.boxes.BoxCoder",
    "frcnn.matcher.Matcher": "frcnn.modeling.matcher.Matcher",
    "frcnn.roi_heads.RoIHeads": "frcnn.modeling.roi_heads.RoIHeads",
    "frcnn.roi_pool.RoIPooler": "frcnn.modeling.roi_heads.RoIPooler",
    "frcnn.roi_pool.MultiLevelRoIPooler": "frcnn.modeling.roi_heads.MultiLevelRoIPooler",
    "frcnn.box_head.FCHead": "frcnn.modeling.roi_heads.FCHead",
    "frcnn.box_head.ResNetC5Head": "frcnn.modeling.roi_heads.ResNetC5Head",
    "frcnn.backbones.build_backbone": "frcnn.modeling.backbone.build_backbone",
    "frcnn.backbones.build_fpn_backbone": "frcnn.modeling.backbone.build_fpn_backbone",
}
TRANSFORM = "frcnn.modeling.transform.InputTransform"


def _rewrite(node: Any) -> Any:
    if isinstance(node, Mapping):
        out = {key: _rewrite(value) for key, value in node.items()}
        target = out.get("_target_")
        if target in RENAMED_TARGETS:
            out["_target_"] = target = RENAMED_TARGETS[target]
        if target == TRANSFORM:
            out["_partial_"] = True
        return out
    if isinstance(node, list | tuple):
        return [_rewrite(value) for value in node]
    return node


def migrate(config: Mapping | None) -> dict | None:
    """A stored model or data config (plain dicts) -> the same config in today's layout; a config
    already in today's layout comes back equal."""
    if config is None:
        return None
    out = _rewrite(config)
    out.pop("init_from", None)
    return out
