"""What to do with an image that cannot be read: ``on_bad_image=error`` (the default) or ``skip``.

``error`` stops with a ``DataError`` naming every such file (at setup, or at the first failed decode
during an epoch). ``skip`` leaves them out: the data module drops them at setup (missing, empty,
truncated, corrupt, or of another size than annotated), a dataset substitutes another image for one
that fails to decode during an epoch, and predict.py leaves it out of its results. Each skipped file
is logged and appended, with its reason, to the run's list (``BadImageLog``: one tab-separated line
per image: split, file, reason), so nothing is dropped silently.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from frcnn.data.records import Problem

log = logging.getLogger(__name__)

ON_BAD_IMAGE = ("error", "skip")
# Problem.kind of a fatal problem with an image file itself (not with its annotation).
BAD_IMAGE = "bad image"


def check_policy(on_bad_image: str) -> str:
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    return on_bad_image


class BadImageLog:
    """Appends skipped images to ``path`` (None: log only). Safe from loader worker processes: each
    line is one ``O_APPEND`` write."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None

    def record(self, split: str, problems: Sequence[Problem]) -> None:
        if self.path is None or not problems:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(f"{split}\t{p.file}\t{' '.join(p.message.split())}\n" for p in problems)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)

    def where(self) -> str:
        return f"listed in {self.path}" if self.path is not None else "set data.bad_image_log=<file> to list them"


def read_bad_image_log(path: str | Path) -> list[tuple[str, str, str]]:
    """The (split, file, reason) lines a ``BadImageLog`` wrote."""
    path = Path(path)
    if not path.is_file():
        return []
    return [tuple(line.split("\t", 2)) for line in path.read_text().splitlines() if line]
