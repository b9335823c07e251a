"""The tiny trained checkpoint shared by the API and serving tests: 2 training steps of the tiny
model on the tiny shapes dataset (``tests.app.helpers``), trained once per session.

An almost untrained tiny model still scores many boxes above its 0.05 threshold, which is all that
tests of equality (Detector vs predict.py, server vs Detector, page vs API) need.
"""

from __future__ import annotations

from pathlib import Path

from tests.app.helpers import SHAPES, compose_config, script, tiny_overrides


def shapes_data(base: Path) -> Path:
    """``paths.data_dir`` with the tiny shapes dataset under ``base`` (generated when missing)."""
    from frcnn.data import ShapesGenerator

    root = base / "data"
    ShapesGenerator(root / "shapes", **SHAPES).ensure()
    return root


def tiny_checkpoint(base: Path) -> Path:
    """``base/tiny_run/checkpoints/last.ckpt``, trained when missing (~10 s on 2 CPU cores)."""
    out = base / "tiny_run"
    ckpt = out / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        cfg = compose_config("train", out, [*tiny_overrides(shapes_data(base)), "logger=csv", "test=false",
                                            "callbacks.validation_images.num_images=0"])
        script("train").train(cfg)
    return ckpt
