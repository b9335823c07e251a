"""Filters on one image's detections: score, count and classes. Shared by ``Detector``, the server
and predict.py, so all three keep the same boxes for the same options.

Detections are ``{"boxes": (D, 4), "scores": (D,), "labels": (D,) int64 in 1..K}``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import torch
from torch import Tensor


def class_labels(classes: Iterable[str | int], class_names: Sequence[str]) -> set[int]:
    """Class names or labels (1..K) -> labels; an unknown one raises ``ValueError`` naming the known ones."""
    labels = set()
    for item in classes:
        if isinstance(item, bool):
            raise ValueError(f"not a class: {item!r}")
        if isinstance(item, int):
            if not 1 <= item <= len(class_names):
                raise ValueError(f"label {item} is not a class (labels are 1..{len(class_names)})")
            labels.add(item)
        elif str(item) in class_names:
            labels.add(class_names.index(str(item)) + 1)
        else:
            raise ValueError(f"unknown class {item!r}; the classes are {list(class_names)}")
    return labels


def kept_labels(class_names: Sequence[str], only: Iterable[str | int] | None = None,
                ignore: Iterable[str | int] | None = None) -> set[int] | None:
    """``only`` minus ``ignore`` as labels; None (every class) when neither is given."""
    if only is None and ignore is None:
        return None
    only, ignore = ([x] if isinstance(x, (str, int)) else x for x in (only, ignore))  # `only_classes=cat`
    keep = class_labels(only, class_names) if only is not None else set(range(1, len(class_names) + 1))
    return keep - (class_labels(ignore, class_names) if ignore is not None else set())


def select(det: Mapping[str, Tensor], min_score: float | None = None, max_detections: int | None = None,
           labels: Collection[int] | None = None) -> dict[str, Tensor]:
    """The detections scoring >= ``min_score`` whose label is in ``labels``, sorted by score
    (descending, ties in model order), at most ``max_detections`` of them."""
    scores = det["scores"]
    keep = torch.ones_like(scores, dtype=torch.bool)
    if min_score is not None:
        keep &= scores >= min_score
    if labels is not None:
        keep &= torch.isin(det["labels"], torch.tensor(sorted(labels), dtype=det["labels"].dtype))
    index = keep.nonzero().flatten()
    index = index[torch.sort(scores[index], descending=True, stable=True).indices]
    if max_detections is not None:
        if max_detections < 0:
            raise ValueError(f"max_detections must be >= 0, got {max_detections}")
        index = index[:max_detections]
    return {key: value[index] for key, value in det.items()}
