"""Class lists of the sources: given in the config, or ``classes: auto`` (read from the annotations).

With ``auto`` a source reads the class names its annotation files use, at construction (the Source
protocol wants ``class_names`` before any ``load``), and sorts them, so the same files always give
the same labels: label k + 1 is the k-th name in sorted order. Every split of a dataset must see the
same list, so the readers collect names over the whole dataset, not one split (VOC: every XML in
``Annotations/``; YOLO: the label files of every split; CSV: its own file and ``classes_from``).

The names end up in the checkpoint like configured ones; a later dataset with one class more gives
another list, which ``DetectionDataModule.load_state_dict`` refuses. Pin the printed list
(``classes: [...]``) once a dataset is final.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from frcnn.data.records import DataError

AUTO = "auto"


def is_auto(classes: object) -> bool:
    """True for the config value ``classes: auto``."""
    return isinstance(classes, str) and classes == AUTO


def checked_class_list(classes: Sequence[str] | str, where: str) -> list[str]:
    """A configured class list as a list of distinct non-empty strings, or a ``DataError`` naming ``where``."""
    if isinstance(classes, str):
        raise DataError(f"{where}: classes must be a list of names or 'auto', got {classes!r}")
    names = [str(name) for name in classes]
    if not names or len(set(names)) != len(names) or any(not name.strip() for name in names):
        raise DataError(f"{where}: classes must be a non-empty list of distinct names, got {names}")
    return names


def sorted_names(found: Iterable[str], where: str) -> list[str]:
    """The distinct names found in the annotations, sorted; a ``DataError`` when there are none."""
    names = sorted({name for name in found if name})
    if not names:
        raise DataError(f"{where}: classes: auto found no class name in the annotations; "
                        "list the classes in the config instead")
    return names
