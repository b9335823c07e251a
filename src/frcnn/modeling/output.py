"""What a detector's forward returns, and how its losses add up.

Both detectors (``FasterRCNN``, ``RPNDetector``) return a ``DetectorOutput``, in training and in
evaluation alike, so validation gets its losses and its detections from the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor

# The four losses, by the fixed names that the logs, the config's weights and the docs all share.
LOSS_NAMES = ("loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg")


@dataclass
class DetectorOutput:
    """losses: the computed losses by their fixed names plus ``loss``, their weighted sum (empty
        without targets).
    detections: per image ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) int64 in 1..K, in the
        input image's pixels; None when not asked for.
    proposals: per image the RPN proposals (P, 4) in the input image's pixels, best first.
    """

    losses: dict[str, Tensor] = field(default_factory=dict)
    detections: list[dict[str, Tensor]] | None = None
    proposals: list[Tensor] = field(default_factory=list)


def loss_weights_for(loss_weights: Mapping[str, float] | None) -> dict[str, float]:
    """Every name of ``LOSS_NAMES`` -> its weight (1.0 when not given); unknown names are an error."""
    unknown = set(loss_weights or {}) - set(LOSS_NAMES)
    if unknown:
        raise ValueError(f"unknown loss weight(s) {sorted(unknown)}; the losses are {LOSS_NAMES}")
    return {name: float((loss_weights or {}).get(name, 1.0)) for name in LOSS_NAMES}


def weighted_total(losses: dict[str, Tensor], weights: Mapping[str, float]) -> dict[str, Tensor]:
    """Adds ``loss``, the weighted sum of ``losses``, to a copy of it (empty stays empty)."""
    if not losses:
        return {}
    out = dict(losses)
    out["loss"] = sum(weights.get(name, 1.0) * value for name, value in losses.items())
    return out
