"""Pascal VOC: ``Annotations/<id>.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``.

- Classes: the 20 VOC classes by default, or ``classes=[...]``; label i + 1 is ``classes[i]``.
  ``classes="auto"``: the sorted object names of every XML in ``Annotations/`` (all splits share
  the folder, so they get the same list; ``frcnn.data.classes``).
- VOC boxes count 1-based pixels inclusively (``xmin = 1`` is the first column, ``xmax`` the last
  covered one). In pixel edges, 0-based: ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``;
  a box over pixels 1..10 becomes ``[0, 10]``.
- ``difficult`` objects go to ``ignore_boxes`` (the VOC protocol ignores them) unless
  ``use_difficult=True`` puts them in the training boxes.
- The image file is ``JPEGImages/<filename>`` from the XML, else ``JPEGImages/<id>.jpg``.
- An XML without ``<size>`` is accepted: the size is read from the image header (by
  ``frcnn.data.validate``), with a counted warning.
- ``image_id`` is the index of the image in the split list.

Reported as problems (fatal): split list missing, an id listed twice, a listed id whose XML or image
is absent, malformed XML, an object with an unknown class name or a non-numeric ``bndbox``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from frcnn.data.classes import checked_class_list, is_auto, sorted_names
from frcnn.data.records import DataError, ImageRecord, Problem

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)


def _int_or_none(element: ET.Element | None) -> int | None:
    try:
        value = int(float(element.text))  # some tools write "500.0"
    except (AttributeError, TypeError, ValueError, OverflowError):  # OverflowError: "inf" (found by fuzzing)
        return None
    return value if value > 0 else None


class VocSource:
    """A split of a VOC-layout dataset.

    Args:
        root: the folder holding ``Annotations``, ``JPEGImages`` and ``ImageSets`` (e.g.
            ``VOCdevkit/VOC2007``).
        split: name of the list in ``ImageSets/Main`` (``train``, ``val``, ``trainval``, ``test``).
        classes: class names, label i + 1 is ``classes[i]``; or "auto" (names read from the XMLs).
        use_difficult: train on ``difficult`` objects too (otherwise they are ignored boxes).
        keep_empty: keep images without any training box as negatives (True) or drop them.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        classes: Sequence[str] | str = VOC_CLASSES,
        use_difficult: bool = False,
        keep_empty: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.classes_auto = is_auto(classes)
        if self.classes_auto:
            self.class_names = sorted_names(self._object_names(), str(self.root / "Annotations"))
        else:
            self.class_names = checked_class_list(classes, f"VocSource({self.root})")
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.use_difficult = use_difficult
        self.keep_empty = keep_empty

    def __repr__(self) -> str:
        return f"VocSource(root={str(self.root)!r}, split={self.split!r})"

    def _object_names(self) -> list[str]:
        """Every object name of every XML in ``Annotations/`` (unreadable files: reported by ``load``)."""
        folder = self.root / "Annotations"
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (classes: auto reads the object names of its XMLs)")
        names = []
        for xml_path in sorted(folder.glob("*.xml")):
            try:
                tree = ET.parse(xml_path).getroot()
            except ET.ParseError:
                continue
            names += [(obj.findtext("name") or "").strip() for obj in tree.findall("object")]
        return names

    @property
    def split_file(self) -> Path:
        return self.root / "ImageSets" / "Main" / f"{self.split}.txt"

    def prepare(self) -> None:
        """Nothing to download or generate: VOC files must already be on disk."""

    def load(self) -> tuple[list[ImageRecord], list[Problem]]:
        """Read every listed image's XML; return the records and the problems found."""
        if not self.split_file.is_file():
            return [], [Problem(str(self.split_file), f"split list for '{self.split}' not found")]
        problems: list[Problem] = []
        first_line: dict[str, int] = {}
        ids = []
        for line_number, line in enumerate(self.split_file.read_text().splitlines(), start=1):
            image_name = line.strip().split(" ")[0]  # the per-class lists carry a second column
            if not image_name:
                continue
            if image_name in first_line:
                problems.append(Problem(str(self.split_file), f"duplicate image id '{image_name}' (lines "
                                                              f"{first_line[image_name]} and {line_number})"))
                continue
            first_line[image_name] = line_number
            ids.append(image_name)

        label_of = {name: label for label, name in enumerate(self.class_names, start=1)}
        records = []
        for index, image_name in enumerate(ids):
            record = self._read_one(index, image_name, label_of, problems)
            if record is not None:
                records.append(record)
        return records, problems

    def _read_one(
        self, index: int, image_name: str, label_of: dict[str, int], problems: list[Problem]
    ) -> ImageRecord | None:
        xml_path = self.root / "Annotations" / f"{image_name}.xml"
        if not xml_path.is_file():
            problems.append(Problem(str(xml_path), f"image '{image_name}' is listed in {self.split_file} "
                                                   "but its annotation file is absent"))
            return None
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as error:
            problems.append(Problem(str(xml_path), f"malformed XML ({error})"))
            return None

        image_path = self._image_path(image_name, tree.findtext("filename"))
        if image_path is None:
            problems.append(Problem(str(xml_path), f"image '{image_name}' is listed in {self.split_file} but "
                                                   f"absent from {self.root / 'JPEGImages'}"))
            return None
        width = _int_or_none(tree.find("size/width"))
        height = _int_or_none(tree.find("size/height"))
        if width is None or height is None:
            width = height = None  # filled from the image header by the validation
            problems.append(Problem(str(xml_path), "no valid <size>: image size read from the image file",
                                    fatal=False, kind="size from image"))

        boxes, labels, difficult = [], [], []
        for number, obj in enumerate(tree.findall("object")):
            name = (obj.findtext("name") or "").strip()
            if name not in label_of:
                problems.append(Problem(str(xml_path), f"object #{number}: unknown class name {name!r} "
                                                       f"(classes: {', '.join(self.class_names)})"))
                continue
            try:
                xmin, ymin, xmax, ymax = (float(obj.find(f"bndbox/{key}").text)
                                          for key in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                problems.append(Problem(str(xml_path), f"object #{number} ({name}): bndbox needs numeric "
                                                       "xmin, ymin, xmax, ymax"))
                continue
            boxes.append([xmin - 1.0, ymin - 1.0, xmax, ymax])  # 1-based inclusive -> 0-based edges
            labels.append(label_of[name])
            difficult.append((obj.findtext("difficult") or "0").strip() not in ("0", ""))

        with np.errstate(over="ignore"):  # beyond float32's range: inf, reported by the data check
            boxes_array = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels_array = np.asarray(labels, dtype=np.int64)
        ignored = np.asarray(difficult, dtype=bool) & (not self.use_difficult)
        return ImageRecord(
            path=image_path,
            image_id=index,
            width=width,
            height=height,
            boxes=boxes_array[~ignored],
            labels=labels_array[~ignored],
            ignore_boxes=boxes_array[ignored],
            ignore_labels=labels_array[ignored],
            source=str(xml_path),
        )

    def _image_path(self, image_name: str, filename: str | None) -> Path | None:
        folder = self.root / "JPEGImages"
        candidates = [folder / filename.strip()] if filename and filename.strip() else []
        candidates.append(folder / f"{image_name}.jpg")
        return next((path for path in candidates if path.is_file()), None)
