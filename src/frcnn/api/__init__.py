"""The Python API: ``Detector`` (load a checkpoint or an exported model, predict, draw) and its
``DetectionResult``; the ``Backend`` protocol that runs the model."""

from frcnn.api.backend import Backend, TorchBackend
from frcnn.api.detector import Detector
from frcnn.api.result import DetectionResult

__all__ = ["Backend", "DetectionResult", "Detector", "TorchBackend"]
