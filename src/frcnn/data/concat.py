"""Several sources read as one split: VOC 2007 + 2012 trainval (the paper's "07+12"), or any mix.

- The parts must agree on the classes: the same names in the same order, and the same dataset
  category ids (``label_to_category_id`` must mean one thing); a ``DataError`` at construction
  names the first part that differs.
- Image ids stay unique over the whole split (evaluation keys images by id): the first part keeps
  its own (COCO ids stay COCO ids), every later part's ids are shifted past the largest id before it.
- ``keep_empty`` is the parts' common setting; parts that disagree are a ``DataError``, since the
  DataModule drops images without boxes for the split as a whole.
- Problems of every part are returned together; each names its own file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from frcnn.data.records import DataError, ImageRecord, Problem, Source


class ConcatSource:
    """The parts' images, one after the other, as one source.

    Args:
        sources: the parts, at least one (``VocSource``, ``CocoSource``, ``YoloSource``, ``CsvSource``...).
    """

    def __init__(self, sources: Sequence[Source]) -> None:
        self.sources = list(sources)
        if not self.sources:
            raise DataError("ConcatSource needs at least one source")
        first = self.sources[0]
        self.class_names = list(first.class_names)
        self.category_ids = [int(i) for i in first.category_ids]
        for source in self.sources[1:]:
            if list(source.class_names) != self.class_names:
                raise DataError(f"ConcatSource: {source} has classes {list(source.class_names)}, but {first} has "
                                f"{self.class_names}; the parts must list the same classes in the same order")
            if [int(i) for i in source.category_ids] != self.category_ids:
                raise DataError(f"ConcatSource: {source} maps its labels to category ids {list(source.category_ids)}, "
                                f"but {first} to {self.category_ids}")
        keep = {bool(s.keep_empty) for s in self.sources}
        if len(keep) != 1:
            raise DataError("ConcatSource: the parts disagree on keep_empty "
                            f"({', '.join(f'{s}: {s.keep_empty}' for s in self.sources)})")
        self.keep_empty = keep.pop()
        self.classes_auto = any(getattr(s, "classes_auto", False) for s in self.sources)

    def __repr__(self) -> str:
        return f"ConcatSource({', '.join(map(repr, self.sources))})"

    def prepare(self) -> None:
        """Each part prepares its own files."""
        for source in self.sources:
            source.prepare()

    def load(self) -> tuple[list[ImageRecord], list[Problem]]:
        """Every part's records, image ids made unique; every part's problems."""
        records: list[ImageRecord] = []
        problems: list[Problem] = []
        offset = 0
        for source in self.sources:
            part, part_problems = source.load()
            problems += part_problems
            if not part:
                continue
            shift = offset - min(r.image_id for r in part) if records else 0
            records += [replace(r, image_id=r.image_id + shift) for r in part]
            offset = max(r.image_id for r in records) + 1
        return records, problems
