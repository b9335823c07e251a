"""Ultralytics YOLO labels: one ``.txt`` per image, a line ``class cx cy w h`` per object.

The files are found by ``frcnn.data.yolo_layout`` (dataset YAML or ``images/`` + ``labels/``).

- Values are fractions of the image's width and height, as the image is displayed (EXIF orientation
  applied: labelling tools and Ultralytics' loader both show the rotated image), so the image header
  is read for its size: ``x1 = (cx - w / 2) * W``, ``x2 = (cx + w / 2) * W``, the same for y with H.
- A polygon line (``class x1 y1 x2 y2 x3 y3 ...``, Ultralytics' segment labels) becomes the box
  around its points, as Ultralytics' detection training does.
- An image without a label file, or with an empty one, is a background image (no boxes). Missing
  label files are counted in a warning; when no image of a split has one, the labels folder is wrong
  and that is fatal.
- Classes (``classes``): "auto" (default) uses the YAML's ``names``, or without names the class ids
  found in the label files of every split (names "0", "1", ...); a list names class id i
  ``classes[i]``. Label k + 1 is the k-th class id in increasing order; ``category_ids`` are the
  YOLO ids + 1 (COCO ids are positive), which the COCO export writes.
- ``image_id`` is the index of the image in the split.

Reported per label line (fatal): a value that is not a number, NaN / infinite, a wrong count of
values, a class id that is not a non-negative integer or not among the classes, a value outside
[0, 1] by more than ``NORMALISED_TOLERANCE`` (pixels instead of fractions?). Also fatal: an
unreadable image (its size is needed), a listed image that is absent, a label file without its
image. Boxes that stick out of the image by rounding are clipped by ``frcnn.data.validate``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from frcnn.data.classes import checked_class_list, is_auto
from frcnn.data.decode import ImageDecodeError, inspect_image
from frcnn.data.records import DataError, ImageRecord, Problem
from frcnn.data.yolo_layout import YoloLayout, label_path

# Normalised values may leave [0, 1] by this much (writers' rounding) before the file counts as wrong.
NORMALISED_TOLERANCE = 0.01


def _line_box(values: list[float]) -> tuple[float, float, float, float] | str:
    """Normalised x1, y1, x2, y2 of a ``cx cy w h`` or polygon line's values, or what is wrong."""
    if not all(math.isfinite(v) for v in values):
        return f"NaN or infinite value in {values}"
    if any(v < -NORMALISED_TOLERANCE or v > 1 + NORMALISED_TOLERANCE for v in values):
        return (f"values {values} are not fractions of the image size in [0, 1] (YOLO labels divide by the "
                "image width and height; pixel coordinates?)")
    if len(values) == 4:
        cx, cy, w, h = values
        return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    xs, ys = values[0::2], values[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def parse_label_line(line: str) -> tuple[int, tuple[float, float, float, float]] | str:
    """One label line -> (class id, normalised x1, y1, x2, y2), or the problem in words."""
    fields = line.split()
    if not (len(fields) == 5 or (len(fields) >= 7 and len(fields) % 2 == 1)):
        return (f"expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 x3 y3 ...', "
                f"got {len(fields)} values")
    try:
        number, *values = (float(v) for v in fields)
    except ValueError:
        bad = next(v for v in fields if not _is_float(v))
        return f"{bad!r} is not a number"
    if not (number.is_integer() and number >= 0):
        return f"class id {fields[0]!r} is not a non-negative integer"
    box = _line_box(values)
    return box if isinstance(box, str) else (int(number), box)


def _id_range(ids: list[int]) -> str:
    """``[0, 1, 2]`` -> "0..2"; gaps are listed."""
    if ids == list(range(ids[0], ids[0] + len(ids))):
        return f"{ids[0]}..{ids[-1]}"
    return ", ".join(map(str, ids))


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class YoloSource:
    """A split of a YOLO dataset.

    Args:
        dataset_yaml: the Ultralytics dataset YAML, or a folder with ``images/<split>`` and ``labels/<split>``.
        split: ``train``, ``val`` or ``test`` (YAML), or the name of an ``images/`` subfolder.
        classes: "auto", or the class names by class id.
        keep_empty: keep background images (no boxes) as negatives (True) or drop them.
    """

    def __init__(self, dataset_yaml: str | Path, split: str, classes: Sequence[str] | str = "auto",
                 keep_empty: bool = True) -> None:
        self.layout = YoloLayout.open(dataset_yaml)
        self.split = split
        self.keep_empty = keep_empty
        self.layout.images(split)  # an unknown split fails here, at construction
        self.classes_auto = is_auto(classes) and self.layout.names is None  # names found in the labels
        if not is_auto(classes):
            names = dict(enumerate(checked_class_list(classes, f"YoloSource({self.layout.origin})")))
        elif self.layout.names is not None:
            names = self.layout.names
        else:
            names = {i: str(i) for i in self._class_ids_in_labels()}
            if not names:
                raise DataError(f"{self.layout.origin}: classes: auto found no class id in the label files "
                                "and the dataset has no names; list the classes in the config")
        self.class_ids = list(names)  # YOLO class ids, increasing: label k + 1 is class_ids[k]
        self.class_names = [names[i] for i in self.class_ids]
        self.category_ids = [i + 1 for i in self.class_ids]

    def __repr__(self) -> str:
        return f"YoloSource(dataset_yaml={str(self.layout.origin)!r}, split={self.split!r})"

    def _class_ids_in_labels(self) -> list[int]:
        """Every class id written in the label files of every split (bad lines: reported by ``load``)."""
        found: set[int] = set()
        for split in self.layout.splits:
            for image in self.layout.images(split)[0]:
                path = label_path(image)
                if path.is_file():
                    for line in path.read_text(errors="replace").splitlines():
                        parsed = parse_label_line(line) if line.strip() else None
                        if isinstance(parsed, tuple):
                            found.add(parsed[0])
        return sorted(found)

    def prepare(self) -> None:
        """Nothing to download or generate: YOLO files must already be on disk."""

    def load(self) -> tuple[list[ImageRecord], list[Problem]]:
        """Read every image's size and label file; return the records and the problems found."""
        images, problems = self.layout.images(self.split)
        problems = list(problems) + self.layout.orphan_labels(self.split, images)
        label_of = {class_id: label for label, class_id in enumerate(self.class_ids, start=1)}
        records, without_labels = [], []
        for index, image in enumerate(images):
            labels_file = label_path(image)
            if not labels_file.is_file():
                without_labels.append(labels_file)
            record = self._read_one(index, image, labels_file, label_of, problems)
            if record is not None:
                records.append(record)
        if images and len(without_labels) == len(images):
            problems.append(Problem(str(without_labels[0].parent), f"no label file for any of the {len(images)} "
                                    f"'{self.split}' images (labels are looked for in the folder of each image "
                                    "with 'images' replaced by 'labels')"))
        else:
            problems += [Problem(str(p), "no label file: a background image (no objects)", fatal=False,
                                 kind="no label file: background image") for p in without_labels]
        return records, problems

    def _read_one(self, index: int, image: Path, labels_file: Path, label_of: dict[int, int],
                  problems: list[Problem]) -> ImageRecord | None:
        try:
            info = inspect_image(image, full=False)
        except ImageDecodeError as error:
            problems.append(Problem(str(image), str(error)))
            return None
        boxes, labels = [], []
        lines = labels_file.read_text(errors="replace").splitlines() if labels_file.is_file() else []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parsed = parse_label_line(line)
            if isinstance(parsed, str):
                problems.append(Problem(str(labels_file), f"line {number}: {parsed}"))
                continue
            class_id, (x1, y1, x2, y2) = parsed
            if class_id not in label_of:
                problems.append(Problem(str(labels_file), f"line {number}: class id {class_id} is not among the "
                                                          f"classes (ids {_id_range(list(label_of))})"))
                continue
            boxes.append([x1 * info.width, y1 * info.height, x2 * info.width, y2 * info.height])
            labels.append(label_of[class_id])
        return ImageRecord(
            path=image,
            image_id=index,
            width=info.width,
            height=info.height,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            source=str(labels_file if labels_file.is_file() else image),
        )
