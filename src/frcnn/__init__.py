"""Faster R-CNN, stage by stage, as the seed describes it.

The box convention and the data contract are stated once, in ``frcnn.boxes`` and
``docs/contracts.md``.
"""

__version__ = "0.1.0"
