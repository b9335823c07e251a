"""The check ``src/export.py`` runs after writing a model: the exported file against the eager
model on a few random images of sizes other than the tracing example's."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

from frcnn.export.graph import ExportError
from frcnn.layers.inference_rewrite import optimize_for_inference

BOX_ATOL, SCORE_ATOL = 1e-3, 1e-4
SIZES = ((217, 341), (400, 263), (96, 128), (1030, 777))


def match_by_position(expected: dict[str, Tensor], actual: dict[str, Tensor], tolerance: float = BOX_ATOL) -> Tensor:
    """-> (D,) index into ``actual`` of the detection paired with each expected one (-1: none): the
    nearest unpaired detection of the same label, if it lies within ``tolerance`` px on every
    coordinate. By position, not by rank: float rounding may swap two near-tied scores."""
    D = expected["boxes"].shape[0]
    pairs = torch.full((D,), -1, dtype=torch.int64)
    if D == 0 or actual["boxes"].shape[0] == 0:
        return pairs
    distance = (expected["boxes"][:, None].double() - actual["boxes"][None].double()).abs().amax(-1)  # (D, D')
    distance[expected["labels"][:, None] != actual["labels"][None]] = float("inf")
    taken = torch.zeros(actual["boxes"].shape[0], dtype=torch.bool)
    for i in range(D):  # best-scored first
        row = distance[i].masked_fill(taken, float("inf"))
        j = int(row.argmin())
        if row[j] <= tolerance:
            pairs[i], taken[j] = j, True
    return pairs


def max_differences(expected: list[dict], actual: list[dict]) -> dict[str, float]:
    """Largest score difference of the pairs ``match_by_position`` finds, and how many of the eager
    detections found none within 1e-3 px; raises on a count mismatch."""
    score, unpaired = 0.0, 0
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e["boxes"].shape != a["boxes"].shape:
            raise ExportError(f"verification failed: image {i}: {a['boxes'].shape[0]} exported vs "
                              f"{e['boxes'].shape[0]} eager detections")
        pairs = match_by_position(e, a)
        kept = pairs >= 0
        unpaired += int((~kept).sum())
        if kept.any():
            score = max(score, float((e["scores"][kept] - a["scores"][pairs[kept]]).abs().max()))
    return {"unpaired": unpaired, "scores": score}


def verify_against_eager(model: nn.Module, path: str | Path, fmt: str, count: int = 2, seed: int = 0) -> dict[str, float]:
    """Runs ``count`` random images through the file (ONNX Runtime; a pt2 package in this process) and the
    eager model rewritten as predict.py runs it; raises ``ExportError`` beyond 1e-3 px / 1e-4."""
    from frcnn.export.runtimes import load_backend

    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES[: max(1, count)]]
    eager = optimize_for_inference(copy.deepcopy(model))
    with torch.no_grad():  # one image a call: a batch of mixed sizes is padded, which changes the numbers
        expected = [eager([image]).detections[0] for image in images]
    backend = load_backend({"onnx": "onnxruntime", "pt2": "pt2"}[fmt], path)
    found = max_differences(expected, backend(images))
    if found["unpaired"] or found["scores"] > SCORE_ATOL:
        raise ExportError(f"verification failed: exported detections differ from eager by {found}")
    return found
