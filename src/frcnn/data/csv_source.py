"""CSV: one row per box, ``image,x1,y1,x2,y2,label``.

- ``image`` is relative to the CSV's folder (or absolute); several rows for one image give it
  several boxes; a row with the four box fields and the label empty (``a.jpg,,,,,``) lists an image
  without objects (a background image).
- ``x1, y1, x2, y2`` are pixels of the image as displayed, in the project's convention (0-based
  pixel edges: ``x2`` is the right edge), so no conversion is applied.
- A header is optional: the first row is one when none of its four box fields is a number (e.g.
  ``image,x1,y1,x2,y2,label`` or ``filename,xmin,ymin,xmax,ymax,class``).
- Classes: a list (label i + 1 is ``classes[i]``), or "auto": the sorted labels of this file and of
  the files in ``classes_from`` (give each split the others, so that all get the same list).
- The image size is not in the file: the data check reads it from the image header (EXIF orientation
  applied). ``image_id`` is the order in which images first appear.

Reported per row (fatal): a wrong number of columns, an empty image path, box fields that are not
four numbers (or all empty), NaN / infinite values, a negative width or height, a missing or unknown
label. Boxes partly or wholly outside the image are clipped or dropped by ``frcnn.data.validate``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from frcnn.data.classes import checked_class_list, is_auto, sorted_names
from frcnn.data.records import DataError, ImageRecord, Problem

COLUMNS = "image,x1,y1,x2,y2,label"


@dataclass(frozen=True)
class Row:
    """One usable CSV row: a box with its label, or (box None) an image listed without objects."""

    line: int
    image: str
    box: tuple[float, float, float, float] | None
    label: str | None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_header(fields: list[str]) -> bool:
    return len(fields) == 6 and all(f and _number(f) is None for f in fields[1:5])


def _parse_row(fields: list[str], line: int) -> Row | str:
    """A row's stripped fields -> a ``Row``, or the problem in words."""
    if len(fields) != 6:
        return f"expected 6 columns {COLUMNS}, got {len(fields)}"
    image, *coordinates, label = fields
    if not image:
        return "the image path is empty"
    if not any(coordinates) and not label:
        return Row(line, image, None, None)
    if not all(coordinates):
        return f"x1, y1, x2, y2 must be four numbers (or all empty for an image without objects), got {coordinates}"
    values = [_number(c) for c in coordinates]
    if any(v is None for v in values):
        return f"box {coordinates} has a value that is not a number"
    if not all(math.isfinite(v) for v in values):
        return f"box {coordinates} has a NaN or infinite coordinate"
    x1, y1, x2, y2 = values
    if x2 < x1 or y2 < y1:
        return f"box {coordinates} has a negative width or height (x2 < x1 or y2 < y1)"
    if not label:
        return f"box {coordinates} has no label"
    return Row(line, image, (x1, y1, x2, y2), label)


def read_rows(path: Path) -> tuple[list[Row], list[Problem]]:
    """Every row of a box CSV; unusable rows become problems that name the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    rows: list[Row] = []
    problems: list[Problem] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:  # utf-8-sig: spreadsheet exports start with a BOM
            reader = csv.reader(file)
            first = True
            for fields in reader:
                fields = [f.strip() for f in fields]
                if not any(fields):
                    continue
                if first and _is_header(fields):
                    first = False
                    continue
                first = False
                parsed = _parse_row(fields, reader.line_num)
                if isinstance(parsed, str):
                    problems.append(Problem(str(path), f"line {reader.line_num}: {parsed}"))
                else:
                    rows.append(parsed)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from error
    return rows, problems


def _lines(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
    return f"line {shown}" if len(numbers) == 1 else f"lines {shown}"


class CsvSource:
    """A split described by one box CSV.

    Args:
        csv: the CSV file (``image,x1,y1,x2,y2,label`` rows).
        classes: class names (label i + 1 is ``classes[i]``), or "auto".
        classes_from: with "auto", further CSV files whose labels count too (the other splits).
        keep_empty: keep images without training boxes as negatives (True) or drop them.
    """

    def __init__(self, csv: str | Path, classes: Sequence[str] | str = "auto",
                 classes_from: Sequence[str | Path] = (), keep_empty: bool = True) -> None:
        self.csv = Path(csv)
        self.keep_empty = keep_empty
        self._rows, self._problems = read_rows(self.csv)  # read now: "auto" needs the labels at once
        self.classes_auto = is_auto(classes)
        if self.classes_auto:
            found = [row.label for row in self._rows]
            for other in classes_from:
                found += [row.label for row in read_rows(Path(other))[0]]
            self.class_names = sorted_names(found, str(self.csv))
        else:
            self.class_names = checked_class_list(classes, f"CsvSource({self.csv})")
        self.category_ids = list(range(1, len(self.class_names) + 1))

    def __repr__(self) -> str:
        return f"CsvSource(csv={str(self.csv)!r})"

    def prepare(self) -> None:
        """Nothing to download or generate: the CSV and images must already be on disk."""

    def load(self) -> tuple[list[ImageRecord], list[Problem]]:
        """Group the rows by image; return the records and the problems found."""
        problems = list(self._problems)
        label_of = {name: label for label, name in enumerate(self.class_names, start=1)}
        by_image: dict[str, tuple[list[list[float]], list[int], list[int]]] = {}  # boxes, labels, lines
        for row in self._rows:
            boxes, labels, lines = by_image.setdefault(row.image, ([], [], []))
            lines.append(row.line)
            if row.box is None:
                continue
            if row.label not in label_of:
                problems.append(Problem(str(self.csv), f"line {row.line}: unknown class {row.label!r} "
                                                       f"(classes: {', '.join(self.class_names)})"))
                continue
            boxes.append(list(row.box))
            labels.append(label_of[row.label])
        records = []
        for index, (image, (boxes, labels, lines)) in enumerate(by_image.items()):
            path = Path(image) if Path(image).is_absolute() else self.csv.parent / image
            records.append(ImageRecord(
                path=path,
                image_id=index,
                width=None,  # read from the image header by the validation
                height=None,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64),
                source=f"{self.csv} ({image}, {_lines(lines)})",
            ))
        return records, problems
