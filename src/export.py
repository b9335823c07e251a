"""Export a checkpoint: ``python src/export.py ckpt_path=<ckpt> [format=onnx] [output=model.onnx]``.

The checkpoint (read with ``torch.load(weights_only=True)``) is rebuilt as in eval.py and
predict.py, wrapped as one static-rank graph (``frcnn.export``) and written with its class names,
thresholds and the training config's hash in its metadata. Nothing is left at ``output`` when any
step fails. Options: ``conf/export.yaml``; the contract and the runtimes: docs/export.md.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
import torch  # noqa: E402
from lightning import seed_everything  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from frcnn.app.checkpoint import load_checkpoint, module_from_checkpoint  # noqa: E402
from frcnn.app.errors import report_errors  # noqa: E402
from frcnn.app.instantiate import print_config  # noqa: E402
from frcnn.export.graph import ExportError  # noqa: E402

log = logging.getLogger(__name__)
FORMATS = ("onnx", "pt2")


def load_module(ckpt_path: str):
    """The checkpoint's DetectionModule, with a clear ``ExportError`` for a file that is not ours."""
    try:
        return load_checkpoint(ckpt_path), module_from_checkpoint(ckpt_path)
    except (FileNotFoundError, ValueError, KeyError, TypeError, RuntimeError) as error:
        raise ExportError(f"cannot export {ckpt_path}: {error}") from error


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` to ``cfg.output`` in ``cfg.format``; returns the path and the verification."""
    from frcnn.export.metadata import config_hash

    if cfg.format not in FORMATS:
        raise ExportError(f"unknown format {cfg.format!r}; choose one of {FORMATS}")
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    checkpoint, module = load_module(cfg.ckpt_path)
    hparams = checkpoint.get("hyper_parameters") or {}
    N, H, W = (int(v) for v in cfg.example_size)
    common = dict(
        class_names=module.class_names,
        label_to_category_id=module.label_to_category_id,
        config_digest=config_hash(hparams),
        inference_rewrite=cfg.inference_rewrite,
        example_size=(N, 3, H, W),
    )
    if cfg.format == "onnx":
        from frcnn.export.onnx_export import export_onnx

        path = export_onnx(module.model, cfg.output, full_check=cfg.check, **common)
    else:
        from frcnn.export.pt2_export import export_pt2

        path = export_pt2(module.model, cfg.output, **common)
    verified = None
    if cfg.verify:
        from frcnn.export.verify import verify_against_eager

        verified = verify_against_eager(module.model, path, cfg.format, cfg.verify_images, seed=cfg.seed or 0)
    log.info("exported %s -> %s", cfg.ckpt_path, path)
    return {"path": Path(path), "verified": verified, "module": module}


@hydra.main(version_base="1.3", config_path="../conf", config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    if cfg.get("print_config"):
        print_config(cfg)
    report_errors(export, cfg)  # ExportError, a bad checkpoint...: one block, no stack trace


if __name__ == "__main__":
    main()
