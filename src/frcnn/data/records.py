"""What the annotation readers produce, and how they report a bad file.

An ``ImageRecord`` is one image of a split as its annotation file describes it, already converted to
the project's box convention (``frcnn.modeling.boxes``: ``(N, 4)`` float32 ``x1, y1, x2, y2``, 0-based pixel
edges; labels int64 in 1..K). Readers (``CocoSource``, ``VocSource``) convert and report what they
cannot parse; ``frcnn.data.validate`` checks the boxes and image files and applies the documented
fixes. A record holds plain numpy arrays so a dataset of them pickles cheaply into loader workers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np


class DataError(ValueError):
    """A dataset that cannot be used as it is: the message names each file and its problem."""


@dataclass(frozen=True)
class Problem:
    """One finding of the data check.

    Args:
        file: the file at fault (image, XML, JSON or split list).
        message: what is wrong, in words a user can act on.
        fatal: True when the split cannot be used (``DataError`` at setup); False when the documented
            fix (clip, drop) was applied and the finding is only counted in a warning.
        kind: short tag that groups non-fatal findings for the counted warning ("clipped", ...).
    """

    file: str
    message: str
    fatal: bool = True
    kind: str = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


def _empty_labels() -> np.ndarray:
    return np.zeros((0,), dtype=np.int64)


@dataclass
class ImageRecord:
    """One image and its objects, in the project's box convention.

    Attributes:
        path: the image file.
        image_id: the COCO image id for COCO; the index in the split otherwise.
        width, height: size of the image as displayed (after EXIF orientation); None when the
            annotation does not say (filled in from the image header by the validation).
        boxes: (N, 4) float32 training boxes, labels: (N,) int64 in 1..K.
        ignore_boxes: (M, 4) float32, ignore_labels: (M,) int64: crowd / difficult objects that
            evaluation ignores and training never sees.
        source: the annotation file (and entry) the record came from, for messages.
    """

    path: Path
    image_id: int
    width: int | None
    height: int | None
    boxes: np.ndarray = field(default_factory=_empty_boxes)
    labels: np.ndarray = field(default_factory=_empty_labels)
    ignore_boxes: np.ndarray = field(default_factory=_empty_boxes)
    ignore_labels: np.ndarray = field(default_factory=_empty_labels)
    source: str = ""


class Source(Protocol):
    """An annotated split on disk, as the DataModule sees it.

    ``class_names`` and ``category_ids`` are known right after construction (cheap), so the model's
    config and checkpoints can use them before any image is read. ``prepare`` downloads or generates
    the files (run once, on one process); ``load`` reads the annotations and reports every problem
    instead of stopping at the first.
    """

    class_names: list[str]  # index i -> label i + 1
    category_ids: list[int]  # index i -> the dataset's own id of label i + 1
    keep_empty: bool  # keep images without training boxes as negatives

    def prepare(self) -> None: ...

    def load(self) -> tuple[list[ImageRecord], list[Problem]]: ...
