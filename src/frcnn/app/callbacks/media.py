"""Images and tables from the callbacks to every logger that takes them, and to PNG files.

One place knows how W&B and TensorBoard want media: images as (H, W, 3) uint8 arrays (W&B may
also get an interactive box overlay), tables as rows (W&B table, TensorBoard markdown text).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from lightning import Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image


def write_pngs(folder: Path, images: Mapping[str, np.ndarray]) -> None:
    """{name: (H, W, 3) uint8} -> ``folder/<name>.png``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rgb in images.items():
        Image.fromarray(rgb).save(folder / f"{name}.png")


def log_images(
    trainer: Trainer,
    images: Mapping[str, np.ndarray],
    wandb_images: Mapping[str, np.ndarray] | None = None,
    wandb_boxes: Mapping[str, dict] | None = None,
) -> None:
    """{key: (H, W, 3) uint8} -> every W&B and TensorBoard logger, at the trainer's global step.

    W&B gets ``wandb_images`` instead where given (e.g. the undrawn image) with the ``wandb_boxes``
    overlay of the same key (``frcnn.app.draw.wandb_boxes``), so its slider can filter the boxes.
    """
    step = trainer.global_step
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            logged = {}
            for key, rgb in images.items():
                raw = (wandb_images or {}).get(key, rgb)
                boxes = (wandb_boxes or {}).get(key)
                logged[key] = wandb.Image(raw, boxes=boxes) if boxes is not None else wandb.Image(raw)
            logger.log_metrics(logged, step=step)
        elif isinstance(logger, TensorBoardLogger):
            for key, rgb in images.items():
                logger.experiment.add_image(key, rgb, step, dataformats="HWC")


def log_table(trainer: Trainer, key: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A table -> W&B (``wandb.Table``) and TensorBoard (markdown text); None cells are blanks."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_table(key, columns=list(columns), data=[list(row) for row in rows], step=trainer.global_step)
        elif isinstance(logger, TensorBoardLogger):
            def cell(value) -> str:
                return "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)

            text = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
            text += "\n".join("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
            logger.experiment.add_text(key, text, global_step=trainer.global_step)
