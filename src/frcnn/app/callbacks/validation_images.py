"""The same validation images every validation, ground truth and detections drawn on them."""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer

from frcnn.app.callbacks.media import log_images, write_pngs
from frcnn.app.callbacks.samples import SampleCollector
from frcnn.app.draw import draw_detections, to_uint8, wandb_boxes


class ValidationImages(Callback):
    """The first ``num_images`` validation images (rank 0; the loader is not shuffled) with the
    ground truth (green) and the detections scoring >= ``score_threshold`` (red, with scores),
    drawn by ``frcnn.app.draw``: PNGs in ``save_dir/epoch_XXX/image_<i>.png`` and TensorBoard
    images under ``val/images/<i>``; W&B gets the undrawn image with an interactive overlay of the
    ground truth and of every detection (its slider filters by score).

    Args:
        num_images: how many validation images to show.
        score_threshold: detections below it are not drawn (W&B gets all, with scores).
        save_dir: where the PNGs go; None: only the loggers.
    """

    def __init__(self, num_images: int = 8, score_threshold: float = 0.5, save_dir: str | None = None) -> None:
        self.score_threshold = float(score_threshold)
        self.save_dir = Path(save_dir) if save_dir else None
        self.collector = SampleCollector(num_images)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.collector.reset()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking and trainer.is_global_zero and not self.collector.full:
            images, targets = batch
            self.collector.add(images, targets, outputs)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        samples = self.collector.samples
        if trainer.sanity_checking or not trainer.is_global_zero or not samples:
            return
        names = pl_module.class_names
        drawn, raw, overlays = {}, {}, {}
        for i, s in enumerate(samples):
            key = f"val/images/{i}"
            pixels = draw_detections(s.image, s.target, s.pred, names, self.score_threshold)  # (3, H, W) uint8
            drawn[key] = pixels.permute(1, 2, 0).contiguous().numpy()  # -> (H, W, 3)
            raw[key] = to_uint8(s.image).permute(1, 2, 0).contiguous().numpy()
            overlays[key] = wandb_boxes(s.target, s.pred, dict(enumerate(names, start=1)))
        if self.save_dir is not None:
            write_pngs(self.save_dir / f"epoch_{trainer.current_epoch:03d}",
                       {f"image_{i}": rgb for i, rgb in enumerate(drawn.values())})
        log_images(trainer, drawn, wandb_images=raw, wandb_boxes=overlays)
