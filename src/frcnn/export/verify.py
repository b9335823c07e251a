"""The check ``src/export.py`` runs after writing a model: the exported file against the eager
model on a few random images of sizes other than the tracing example's."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from frcnn.export.graph import ExportError
from frcnn.layers.inference_rewrite import optimize_for_inference

BOX_ATOL, SCORE_ATOL = 1e-3, 1e-4
SIZES = ((217, 341), (400, 263), (96, 128), (1030, 777))


def max_differences(expected: list[dict], actual: list[dict]) -> dict[str, float]:
    """Largest box and score differences after matching by position; raises on a count mismatch."""
    box, score = 0.0, 0.0
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e["boxes"].shape != a["boxes"].shape or not torch.equal(e["labels"], a["labels"]):
            raise ExportError(
                f"verification failed: image {i}: {a['boxes'].shape[0]} exported vs {e['boxes'].shape[0]} eager "
                "detections (or different labels)"
            )
        if e["boxes"].numel():
            box = max(box, float((e["boxes"] - a["boxes"]).abs().max()))
            score = max(score, float((e["scores"] - a["scores"]).abs().max()))
    return {"boxes": box, "scores": score}


def verify_against_eager(model: nn.Module, path: str | Path, fmt: str, count: int = 2, seed: int = 0) -> dict[str, float]:
    """Runs ``count`` random images through the file (ONNX Runtime) and the
    eager model rewritten as predict.py runs it; raises ``ExportError`` beyond 1e-3 px / 1e-4."""
    from frcnn.export.runtimes import load_backend

    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES[: max(1, count)]]
    eager = optimize_for_inference(copy.deepcopy(model))
    with torch.no_grad():  # one image a call: a batch of mixed sizes is padded, which changes the numbers
        expected = [eager([image]).detections[0] for image in images]
    if fmt != "onnx":
        raise ExportError(f"no verification for format {fmt!r}")
    backend = load_backend("onnxruntime", path)
    found = max_differences(expected, backend(images))
    if found["boxes"] > BOX_ATOL or found["scores"] > SCORE_ATOL:
        raise ExportError(f"verification failed: exported detections differ from eager by {found}")
    return found
