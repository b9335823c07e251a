"""COCO: an image folder plus an ``instances`` JSON, read with pycocotools.

- Category ids (COCO's run 1..90 with gaps) map to contiguous labels 1..K in increasing id order;
  ``category_ids[label - 1]`` maps back, so predictions can be reported with COCO's own ids.
- ``bbox`` is ``[x, y, width, height]`` in 0-based pixel edges: ``x1, y1, x2, y2 = x, y, x + w, y + h``.
- ``iscrowd`` objects go to ``ignore_boxes`` (kept out of training, ignored by evaluation).
- Images without any training box are kept as negatives, or dropped with ``keep_empty=False``.

Structural problems are reported per entry (``Problem``) rather than raised at the first one: an
annotation whose ``bbox`` is not four numbers, an unknown ``category_id`` or ``image_id``, an image
entry without ``file_name``/``width``/``height``, duplicate image or annotation ids, ids or category ids
that are not integers (``true``, a list: found by tests/data/test_fuzz_loaders.py). Box values
(NaN, negative size, outside the image) are checked later by ``frcnn.data.validate``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from frcnn.data.records import DataError, ImageRecord, Problem


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_float(value: int | float) -> float:
    """A JSON number as a float; integers beyond float's range become +-inf (float() would raise)."""
    try:
        return float(value)
    except OverflowError:
        return math.copysign(math.inf, value)


def read_json(path: Path) -> dict:
    """Parse an annotation JSON, turning any failure into a ``DataError`` that names the file."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        with path.open("rb") as file:
            dataset = json.load(file)
    except (OSError, ValueError) as error:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{path}: not a valid JSON file ({error})") from error
    if not isinstance(dataset, dict) or not isinstance(dataset.get("categories"), list):
        raise DataError(f"{path}: not a COCO instances file (no 'categories' list at the top level)")
    return dataset


def parse_categories(categories: list, path: Path) -> tuple[list[int], list[str]]:
    """COCO categories -> (ids in increasing order, names in the same order)."""
    by_id: dict[int, str] = {}
    for position, category in enumerate(categories):
        if not isinstance(category, dict) or not _is_positive_int(category.get("id")):
            raise DataError(f"{path}: category #{position} needs a positive integer 'id', got {category!r}")
        if not isinstance(category.get("name"), str):
            raise DataError(f"{path}: category id {category['id']} needs a string 'name'")
        if category["id"] in by_id:
            raise DataError(f"{path}: duplicate category id {category['id']}")
        by_id[category["id"]] = category["name"]
    if not by_id:
        raise DataError(f"{path}: the 'categories' list is empty")
    ids = sorted(by_id)
    return ids, [by_id[i] for i in ids]


class CocoSource:
    """A COCO-format split.

    Args:
        image_dir: folder that ``file_name`` of each image entry is relative to.
        ann_file: the instances JSON. Read once, at construction (the category list is needed at
            once for the class names), and released after ``load``.
        keep_empty: keep images without any training box as negatives (True) or drop them.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, keep_empty: bool = True) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.keep_empty = keep_empty
        self._dataset: dict | None = read_json(self.ann_file)
        self.category_ids, self.class_names = parse_categories(self._dataset["categories"], self.ann_file)
        self.coco: COCO | None = None  # the pycocotools index of the entries that passed the checks

    def __repr__(self) -> str:
        return f"CocoSource(ann_file={str(self.ann_file)!r}, image_dir={str(self.image_dir)!r})"

    def prepare(self) -> None:
        """Nothing to download or generate: COCO files must already be on disk."""

    def load(self) -> tuple[list[ImageRecord], list[Problem]]:
        """Read every image entry and annotation; return the records and the problems found."""
        dataset = self._dataset if self._dataset is not None else read_json(self.ann_file)
        self._dataset = None
        file = str(self.ann_file)
        problems: list[Problem] = []
        images = self._checked_images(dataset.get("images"), problems)
        annotations = self._checked_annotations(dataset.get("annotations", []), images, problems)

        # pycocotools builds the image -> annotations index (it prints progress: silenced).
        coco = COCO()
        coco.dataset = {"images": list(images.values()), "annotations": annotations,
                        "categories": dataset["categories"]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        self.coco = coco

        label_of = {category_id: label for label, category_id in enumerate(self.category_ids, start=1)}
        records = []
        for image_id, image in images.items():
            train_boxes, train_labels, crowd_boxes, crowd_labels = [], [], [], []
            for annotation in coco.imgToAnns.get(image_id, []):
                x, y, w, h = (_as_float(v) for v in annotation["bbox"])
                box = [x, y, x + w, y + h]  # xywh -> xyxy, both in 0-based pixel edges
                if annotation.get("iscrowd", 0):
                    crowd_boxes.append(box)
                    crowd_labels.append(label_of[annotation["category_id"]])
                else:
                    train_boxes.append(box)
                    train_labels.append(label_of[annotation["category_id"]])
            with np.errstate(over="ignore"):  # beyond float32's range: inf, reported by the data check
                box_arrays = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in (train_boxes, crowd_boxes)]
            records.append(ImageRecord(
                path=self.image_dir / image["file_name"],
                image_id=image_id,
                width=image["width"],
                height=image["height"],
                boxes=box_arrays[0],
                labels=np.asarray(train_labels, dtype=np.int64),
                ignore_boxes=box_arrays[1],
                ignore_labels=np.asarray(crowd_labels, dtype=np.int64),
                source=f"{file} (image id {image_id})",
            ))
        return records, problems

    def _checked_images(self, entries: Any, problems: list[Problem]) -> dict[int, dict]:
        """Image entries with an int id, a file name and a positive size, by id (first one wins)."""
        file = str(self.ann_file)
        if not isinstance(entries, list):
            problems.append(Problem(file, "no 'images' list at the top level"))
            return {}
        images: dict[int, dict] = {}
        for position, image in enumerate(entries):
            if not isinstance(image, dict) or not isinstance(image.get("id"), int) or isinstance(image["id"], bool):
                problems.append(Problem(file, f"image entry #{position} has no integer 'id'"))
                continue
            image_id = image["id"]
            if image_id in images:
                problems.append(Problem(file, f"duplicate image id {image_id} (image entry #{position}, "
                                              f"file {image.get('file_name')!r})"))
                continue
            if not isinstance(image.get("file_name"), str) or not image["file_name"]:
                problems.append(Problem(file, f"image id {image_id} has no 'file_name'"))
                continue
            if not (_is_positive_int(image.get("width")) and _is_positive_int(image.get("height"))):
                problems.append(Problem(file, f"image id {image_id} ({image['file_name']}) needs positive "
                                              f"integer 'width' and 'height', got {image.get('width')!r} "
                                              f"x {image.get('height')!r}"))
                continue
            images[image_id] = image
        return images

    def _checked_annotations(self, entries: Any, images: dict[int, dict], problems: list[Problem]) -> list[dict]:
        """Annotations whose ids, image, category and bbox are well formed."""
        file = str(self.ann_file)
        if not isinstance(entries, list):
            problems.append(Problem(file, "'annotations' is not a list"))
            return []
        known_categories = set(self.category_ids)
        seen_ids: set[int] = set()
        kept = []
        for position, annotation in enumerate(entries):
            if not isinstance(annotation, dict) or not _is_int(annotation.get("id")):
                problems.append(Problem(file, f"annotation #{position} has no integer 'id'"))
                continue
            where = f"annotation id {annotation['id']}"
            if annotation["id"] in seen_ids:
                problems.append(Problem(file, f"duplicate annotation id {annotation['id']}"))
                continue
            seen_ids.add(annotation["id"])
            image = images.get(annotation.get("image_id")) if _is_int(annotation.get("image_id")) else None
            if image is None:
                problems.append(Problem(file, f"{where} refers to image id {annotation.get('image_id')!r}, "
                                              "which is not among the (valid) images"))
                continue
            where += f" (image {image['file_name']})"
            if not _is_int(annotation.get("category_id")) or annotation["category_id"] not in known_categories:
                problems.append(Problem(file, f"{where}: unknown category_id {annotation.get('category_id')!r}"))
                continue
            bbox = annotation.get("bbox")
            if not isinstance(bbox, list | tuple) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
                problems.append(Problem(file, f"{where}: bbox must be 4 numbers [x, y, width, height], "
                                              f"got {bbox!r}"))
                continue
            if not all(math.isfinite(_as_float(v)) for v in bbox):
                problems.append(Problem(file, f"{where}: bbox has a NaN or infinite value {bbox!r}"))
                continue
            if bbox[2] < 0 or bbox[3] < 0:
                problems.append(Problem(file, f"{where}: bbox has a negative width or height {bbox!r}"))
                continue
            kept.append(annotation)
        return kept
