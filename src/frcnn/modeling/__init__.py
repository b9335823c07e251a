"""What the model computes: the detectors (``detector``, ``rpn_detector``) and their stages.

    transform -> backbone/ -> rpn/ (head, targets + losses, proposals) -> roi_heads/ (sampling,
    poolers, box heads, losses, post-processing)

with the pieces both stages share: ``boxes`` (the box convention and the box coder), ``anchors``,
``matcher``, ``sampling`` (balanced fg / bg subsampling), ``batched`` (padding and per-group top-k
over a batch) and ``losses`` (the normalised box loss). Kernels live in ``frcnn.layers``.
"""

from frcnn.modeling.detector import FasterRCNN
from frcnn.modeling.errors import IncompatibleParts
from frcnn.modeling.output import LOSS_NAMES, DetectorOutput
from frcnn.modeling.rpn_detector import RPNDetector

__all__ = ["LOSS_NAMES", "DetectorOutput", "FasterRCNN", "IncompatibleParts", "RPNDetector"]
