"""The training application: the LightningModule, optimizer / schedule builders, callbacks and the
helpers that the entry points ``src/train.py``, ``src/eval.py`` and ``src/predict.py`` share."""

from frcnn.app.module import DetectionModule

__all__ = ["DetectionModule"]
