"""Faster R-CNN, stage by stage, as the seed describes it.

The box convention and the data contract are stated once, in ``frcnn.boxes`` and
``docs/contracts.md``. ``from frcnn import Detector`` is the Python API (``frcnn.api``), imported on
first use so that ``import frcnn`` stays light.
"""

__version__ = "0.1.0"

_LAZY = {"Detector": "frcnn.api", "DetectionResult": "frcnn.api"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'frcnn' has no attribute {name!r}")


__all__ = ["DetectionResult", "Detector"]
