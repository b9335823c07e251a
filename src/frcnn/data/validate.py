"""The data check: validate records against their image files, and summarise a split.

Pure functions: no config, no logging. ``DetectionDataModule.setup`` and the ``frcnn.data.check``
CLI both call ``validate_records``; setup then raises on fatal problems (``raise_for_problems``)
and warns with counts for the fixed ones, the CLI prints everything (``format_report``).

Handling policy, case by case (the readers ``coco.py`` / ``voc.py`` report the parsing cases):

======================================  ===================================================
case                                    handling
======================================  ===================================================
image file missing, empty, not an       fatal: ``DataError`` at setup naming the image; with
image, corrupt                          ``on_bad_image=skip`` the image is left out and listed
                                        (``frcnn.data.bad_images``), as are the two rows below
truncated JPEG / PNG                    fatal at setup. ``check_images=header`` finds it by the
                                        missing end marker (one small read per file) and
                                        confirms by decoding; ``full`` decodes every image
                                        (also finds corruption inside a complete file);
                                        ``off`` reads no image at setup. An image that still
                                        fails to decode during an epoch raises ``DataError``
                                        naming the file (never a silently wrong image).
image size differs from the annotation  fatal (the boxes would be in another frame)
XML without ``<size>``                  size read from the image header; counted warning
malformed XML / JSON, unknown class,    fatal, naming the annotation file and entry
bbox of wrong length or type, image
listed but absent, duplicate ids
NaN / infinite coordinate               fatal
negative width or height                fatal (x2 < x1 or y2 < y1: a wrong box, not a tiny one)
box partly outside the image            clipped to the image; counted warning when it went
                                        out by more than ``CLIP_TOLERANCE`` pixels (COCO
                                        rounding is silently clipped)
box wholly outside / zero area          dropped (with its label); counted warning
image without training boxes            kept as a negative (``keep_empty``), reported
======================================  ===================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from frcnn.data.bad_images import BAD_IMAGE
from frcnn.data.decode import ImageDecodeError, inspect_image
from frcnn.data.records import DataError, ImageRecord, Problem

CHECK_MODES = ("full", "header", "off")
# A box may stick out of its image by this many pixels without a warning (annotation rounding).
CLIP_TOLERANCE = 1.0
# At most this many fatal problems are spelled out in a DataError message.
MAX_LISTED = 20


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box.tolist()) + "]"


def check_boxes(
    boxes: np.ndarray, labels: np.ndarray, width: int, height: int, file: str
) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
    """Validate and fix the boxes of one image.

    Args:
        boxes: (N, 4) float32 x1, y1, x2, y2 in 0-based pixel edges; labels: (N,) int64.
        width, height: the image size the boxes must lie in.
        file: the annotation file to name in problems.

    Returns:
        boxes (N', 4) clipped to the image, labels (N',): the zero-area and outside boxes dropped;
        problems: fatal ones (NaN, negative size) and counted ones (clipped, dropped).
    """
    problems: list[Problem] = []
    size = f"{width}x{height}"
    finite = np.isfinite(boxes).all(axis=1)  # (N,)
    for box in boxes[~finite]:
        problems.append(Problem(file, f"box {_fmt_box(box)} has a NaN or infinite coordinate"))
    negative = finite & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    for box in boxes[negative]:
        problems.append(Problem(file, f"box {_fmt_box(box)} has a negative width or height"))
    if problems:
        return boxes, labels, problems

    limits = np.array([width, height, width, height], dtype=np.float32)
    clipped = np.clip(boxes, 0.0, limits)  # (N, 4)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    outside = (boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    moved = np.abs(clipped - boxes).max(axis=1) > CLIP_TOLERANCE
    for box, is_empty, is_outside, is_moved, new in zip(boxes, empty, outside, moved, clipped):
        if is_empty and is_outside:
            problems.append(Problem(file, f"box {_fmt_box(box)} lies wholly outside the {size} image: dropped",
                                    fatal=False, kind="dropped: outside the image"))
        elif is_empty:
            problems.append(Problem(file, f"box {_fmt_box(box)} has zero area: dropped",
                                    fatal=False, kind="dropped: zero area"))
        elif is_moved:
            problems.append(Problem(file, f"box {_fmt_box(box)} is partly outside the {size} image: clipped "
                                          f"to {_fmt_box(new)}", fatal=False, kind="clipped to the image"))
    return clipped[~empty], labels[~empty], problems


def validate_records(
    records: Sequence[ImageRecord], check_images: str = "header"
) -> tuple[list[ImageRecord], list[Problem]]:
    """Check every record's image file and boxes.

    Args:
        records: as a reader produced them.
        check_images: "full" decodes every image, "header" reads headers and end markers, "off"
            trusts the annotations (only images whose size the annotation lacks are opened).

    Returns:
        the usable records (fixed: clipped boxes, dropped empty ones, sizes filled in) and all
        problems found; records with a fatal problem are left out.
    """
    if check_images not in CHECK_MODES:
        raise ValueError(f"check_images must be one of {CHECK_MODES}, got {check_images!r}")
    valid: list[ImageRecord] = []
    problems: list[Problem] = []
    for record in records:
        width, height = record.width, record.height
        if check_images != "off" or width is None or height is None:
            try:
                info = inspect_image(record.path, full=check_images == "full")
            except ImageDecodeError as error:
                problems.append(Problem(str(record.path), str(error), kind=BAD_IMAGE))
                continue
            if width is None or height is None:
                width, height = info.width, info.height
            elif (width, height) != (info.width, info.height):
                hint = ""
                if info.orientation != 1 and (width, height) == (info.stored_width, info.stored_height):
                    hint = (f" (the file has EXIF orientation {info.orientation}; the annotation matches the "
                            "stored, unrotated pixels)")
                problems.append(Problem(record.source or str(record.path),
                                        f"annotation says the image is {width}x{height} but {record.path.name} "
                                        f"is {info.width}x{info.height}{hint}", kind=BAD_IMAGE))
                continue
        file = record.source or str(record.path)
        boxes, labels, box_problems = check_boxes(record.boxes, record.labels, width, height, file)
        ignore_boxes, ignore_labels, ignore_problems = check_boxes(
            record.ignore_boxes, record.ignore_labels, width, height, file
        )
        problems += box_problems + ignore_problems
        if any(p.fatal for p in box_problems + ignore_problems):
            continue
        valid.append(replace(record, width=width, height=height, boxes=boxes, labels=labels,
                             ignore_boxes=ignore_boxes, ignore_labels=ignore_labels))
    return valid, problems


def counted_warnings(problems: Sequence[Problem]) -> list[str]:
    """One line per kind of fixed problem: how many, and the first example."""
    fixed = [p for p in problems if not p.fatal]
    counts = Counter(p.kind for p in fixed)
    first = {}
    for problem in fixed:
        first.setdefault(problem.kind, problem)
    return [f"{count} x {kind} (first: {first[kind]})" for kind, count in counts.items()]


def raise_for_problems(split: str, source: object, problems: Sequence[Problem]) -> None:
    """Raise a ``DataError`` listing the fatal problems of a split, if there are any."""
    fatal = [p for p in problems if p.fatal]
    if not fatal:
        return
    lines = [f"{len(fatal)} problem(s) in the {split} split of {source}:"]
    lines += [f"  {p}" for p in fatal[:MAX_LISTED]]
    if len(fatal) > MAX_LISTED:
        lines.append(f"  ... and {len(fatal) - MAX_LISTED} more")
    lines.append("Fix the files, or run `python -m frcnn.data.check data=<name>` for the full report.")
    if any(p.kind == BAD_IMAGE for p in fatal):
        lines.append("To train on the other images: data.on_bad_image=skip (the skipped ones are listed in the run "
                     "folder, bad_images.tsv).")
    raise DataError("\n".join(lines))


@dataclass(frozen=True)
class SplitSummary:
    """What the data check reports about a split (all counts over the usable records)."""

    images: int
    images_without_boxes: int
    boxes_per_class: dict[str, int]
    ignored_per_class: dict[str, int]
    image_widths: np.ndarray  # (I,) int
    image_heights: np.ndarray  # (I,) int
    box_sides: np.ndarray  # (B,) float: sqrt(area) of each training box, in pixels
    box_aspects: np.ndarray  # (B,) float: width / height of each training box


def summarize(records: Sequence[ImageRecord], class_names: Sequence[str]) -> SplitSummary:
    """Counts and size distributions of a split's usable records."""
    boxes = np.concatenate([r.boxes for r in records]) if records else np.zeros((0, 4), np.float32)
    labels = np.concatenate([r.labels for r in records]) if records else np.zeros(0, np.int64)
    ignored = np.concatenate([r.ignore_labels for r in records]) if records else np.zeros(0, np.int64)
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return SplitSummary(
        images=len(records),
        images_without_boxes=sum(len(r.boxes) == 0 for r in records),
        boxes_per_class={name: int((labels == i).sum()) for i, name in enumerate(class_names, start=1)},
        ignored_per_class={name: int((ignored == i).sum()) for i, name in enumerate(class_names, start=1)},
        image_widths=np.array([r.width for r in records], dtype=np.int64),
        image_heights=np.array([r.height for r in records], dtype=np.int64),
        box_sides=np.sqrt(box_w * box_h),
        box_aspects=box_w / np.maximum(box_h, 1e-6),
    )


def _distribution(values: np.ndarray, unit: str = "") -> str:
    if len(values) == 0:
        return "-"
    p = np.percentile(values, [0, 5, 50, 95, 100])
    return " / ".join(f"{v:.4g}{unit}" for v in p) + "  (min / p5 / median / p95 / max)"


def format_report(split: str, source: object, summary: SplitSummary, problems: Sequence[Problem]) -> str:
    """The data check's text report for one split."""
    total_boxes = sum(summary.boxes_per_class.values())
    total_ignored = sum(summary.ignored_per_class.values())
    sides = summary.box_sides
    lines = [
        f"== {split}: {source}",
        f"images: {summary.images}   without training boxes: {summary.images_without_boxes}",
        f"boxes: {total_boxes} for training, {total_ignored} ignored (crowd / difficult)",
        "boxes per class (train / ignored):",
    ]
    width = max((len(name) for name in summary.boxes_per_class), default=0)
    for name, count in summary.boxes_per_class.items():
        lines.append(f"  {name:<{width}}  {count:>7}  {summary.ignored_per_class[name]:>5}")
    lines += [
        f"image width:  {_distribution(summary.image_widths)}",
        f"image height: {_distribution(summary.image_heights)}",
        f"box side sqrt(area): {_distribution(sides, ' px')}",
        f"box size (COCO buckets): small < 32^2: {int((sides < 32).sum())}, "
        f"medium: {int(((sides >= 32) & (sides < 96)).sum())}, large >= 96^2: {int((sides >= 96).sum())}",
        f"box aspect w/h: {_distribution(summary.box_aspects)}",
    ]
    fatal = [p for p in problems if p.fatal]
    fixed = [p for p in problems if not p.fatal]
    lines.append(f"problems: {len(fatal)} fatal, {len(fixed)} fixed")
    lines += [f"  ERROR {p}" for p in fatal]
    lines += [f"  FIXED {p}" for p in fixed]
    return "\n".join(lines)
