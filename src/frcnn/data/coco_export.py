"""Records -> a COCO instances dict (what ``python -m frcnn.data.convert`` writes).

The inverse of ``CocoSource``'s reading:

- ``images``: ``id`` = the record's ``image_id``, ``file_name`` = the image path relative to
  ``image_dir`` (absolute when it lies outside), ``width`` / ``height`` as displayed.
- ``categories``: ``id`` = the source's ``category_ids`` (COCO's own ids for COCO; 1..K, or YOLO
  id + 1, otherwise), ``name`` = the class name.
- ``annotations``: per image, the training boxes (``iscrowd`` 0), then the ignored ones (``iscrowd``
  1: COCO crowd or VOC difficult), ids 1, 2, ... in that order. ``bbox`` = ``[x1, y1, x2 - x1,
  y2 - y1]``, ``area`` = width x height of that bbox (no masks exist here to measure).
- Values are rounded to ``DECIMALS`` decimals: records hold float32, so COCO's 2-decimal boxes
  would otherwise come back as 61.869998931884766; 1/1000 px is below any annotation's precision.

What a record does not carry is not written: segmentations, COCO's mask ``area``, licences and
the ``info`` block, annotation ids (renumbered).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from frcnn.data.records import ImageRecord

DECIMALS = 3


def _round(value: float) -> float | int:
    rounded = round(float(value), DECIMALS)
    return int(rounded) if rounded.is_integer() else rounded


def image_file_name(path: Path, image_dir: Path) -> str:
    """``path`` relative to ``image_dir`` (with ``..`` if needed on the same drive), else absolute."""
    try:
        return Path(os.path.relpath(path.resolve(), image_dir.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return path.resolve().as_posix()


def to_coco(
    records: Sequence[ImageRecord], class_names: Sequence[str], category_ids: Sequence[int], image_dir: Path
) -> dict:
    """A COCO instances dict of ``records``.

    Args:
        records: validated records (sizes known), boxes (N, 4) / ignore_boxes (M, 4) float32 x1, y1, x2, y2.
        class_names, category_ids: the source's; label k + 1 is ``class_names[k]`` with COCO id ``category_ids[k]``.
        image_dir: the folder the written ``file_name`` values are relative to.
    """
    categories = [{"id": int(i), "name": str(n)} for i, n in zip(category_ids, class_names)]
    category_of = {label: int(i) for label, i in enumerate(category_ids, start=1)}
    images, annotations = [], []
    for record in records:
        images.append({"id": int(record.image_id), "file_name": image_file_name(record.path, image_dir),
                       "width": int(record.width), "height": int(record.height)})
        for crowd, boxes, labels in ((0, record.boxes, record.labels), (1, record.ignore_boxes, record.ignore_labels)):
            for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
                w, h = _round(x2 - x1), _round(y2 - y1)
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": int(record.image_id),
                    "category_id": category_of[label],
                    "bbox": [_round(x1), _round(y1), w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                })
    return {"images": images, "annotations": annotations, "categories": categories}
