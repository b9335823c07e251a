"""How the export graph's non-standard pieces become standard ONNX operators (``torch.onnx``'s
``custom_translation_table``).

* ``frcnn_export::nms`` -> ``NonMaxSuppression`` with ``score_threshold`` the lowest float, so a
  -inf score is no candidate (``frcnn.export.ops``).
* Python float arithmetic on sizes (``torch.sym_float``, ``/``) -> in double, as Python computes
  it. ``torch.onnx`` casts such values to float32, where ``floor(H * scale)`` of the resize can
  differ from the eager model's by a pixel (``frcnn.export.resize``).

torchvision's ``roi_align`` / ``roi_pool`` need no entry: ``torch.onnx`` maps them to ``RoiAlign``
(``half_pixel`` for aligned, ``output_half_pixel`` otherwise) and ``MaxRoiPool``.
"""

from __future__ import annotations

import operator

import torch
from onnx import TensorProto
from onnxscript import opset18 as op

from frcnn.export.ops import LOWEST_FLOAT


def onnx_nms(boxes, scores, max_per_class: int, iou_threshold: float):
    """(B, n, 4), (B, C, n) -> (S, 3) int64: ``frcnn_export::nms``."""
    return op.NonMaxSuppression(
        boxes,
        scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[LOWEST_FLOAT]),
        center_point_box=0,
    )


def sym_float_double(value):
    """SymInt -> SymFloat, in double as Python's float."""
    return op.Cast(value, to=TensorProto.DOUBLE)


def truediv_double(a, b):
    """a / b on symbolic sizes, in double as Python's true division."""
    return op.Div(op.Cast(a, to=TensorProto.DOUBLE), op.Cast(b, to=TensorProto.DOUBLE))


def translation_table() -> dict:
    return {
        torch.ops.frcnn_export.nms.default: onnx_nms,
        torch.sym_float: sym_float_double,
        operator.truediv: truediv_double,
    }
