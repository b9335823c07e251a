"""Callbacks: stop on a non-finite loss, show validation images with boxes, tabulate per-class AP,
plot each validation (precision-recall curves, confusion matrix, images).

They talk to the loggers directly (W&B, TensorBoard) or write files; scalar logging stays in the
LightningModule. All of them read what ``DetectionModule`` exposes: ``last_losses`` (the current
step's losses), ``last_metrics[split]`` (the last COCO evaluation) and ``class_names``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from frcnn.app.draw import draw_detections, wandb_boxes
from frcnn.metrics import gather_per_image, plot_confusion_matrix, plot_image_grid, plot_pr_curves
from frcnn.metrics.confusion import image_confusion

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message names the step and the losses."""


class NonFiniteLossGuard(Callback):
    """Stops training at the first NaN / inf loss, before it reaches the weights.

    The check runs before the backward pass, so the weights and the optimizer state stay those of
    the last good step, and no checkpoint is written afterwards: ``last.ckpt`` on disk is the last
    good one. Under DDP the ranks agree (any rank bad -> all stop), so no rank hangs in a collective.
    """

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        any_bad = trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not any_bad:
            return
        losses = getattr(pl_module, "last_losses", None) or {"loss": loss.detach()}
        values = ", ".join(f"{name}={float(value):.4g}" for name, value in losses.items())
        where = f"global step {trainer.global_step} (epoch {trainer.current_epoch})"
        if finite:
            where += " on another rank"
        saved = [path for c in trainer.checkpoint_callbacks for path in (c.last_model_path, c.best_model_path) if path]
        ckpt = next((p for p in saved if p.endswith("last.ckpt")), saved[0] if saved else "none written yet")
        raise NonFiniteLossError(
            f"non-finite training loss at {where}: {values}. Training stopped before the update; "
            f"last good checkpoint: {ckpt}. Try a lower lr, a longer warm-up or gradient clipping."
        )


class DetectionImageLogger(Callback):
    """Logs the same validation images every epoch with ground-truth and predicted boxes.

    The fixed set is the first ``num_images`` images of the validation loader (not shuffled) on
    rank 0. W&B gets ``wandb.Image`` with ``boxes={"ground_truth", "predictions"}`` and class
    labels; TensorBoard and ``save_dir`` get the images with boxes drawn (ground truth green,
    predictions red with class name and score).

    Args:
        num_images: how many validation images to show.
        score_threshold: predictions below this score are not drawn (W&B gets all, with scores).
        save_dir: also write ``epoch_XXX_<i>.png`` there; None: only the loggers.
    """

    def __init__(self, num_images: int = 8, score_threshold: float = 0.5, save_dir: str | None = None) -> None:
        self.num_images = int(num_images)
        self.score_threshold = float(score_threshold)
        self.save_dir = Path(save_dir) if save_dir else None
        self._samples: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self._samples) >= self.num_images:
            return
        images, targets = batch
        for image, target, pred in zip(images, targets, outputs):
            if len(self._samples) < self.num_images:
                cpu = {k: v.detach().cpu() for k, v in target.items()}
                self._samples.append((image.detach().cpu(), cpu, {k: v.detach().cpu() for k, v in pred.items()}))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self._samples:
            return
        names, step, epoch = pl_module.class_names, trainer.global_step, trainer.current_epoch
        drawn = [draw_detections(img, tgt, pred, names, self.score_threshold) for img, tgt, pred in self._samples]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                class_labels = {label: name for label, name in enumerate(names, start=1)}
                logger.log_image(
                    "val/images",
                    [(img.permute(1, 2, 0).clamp(0, 1) * 255).to(torch.uint8).numpy() for img, _, _ in self._samples],
                    step=step,
                    boxes=[wandb_boxes(tgt, pred, class_labels) for _, tgt, pred in self._samples],
                    caption=[f"image {int(tgt['image_id'])}" for _, tgt, _ in self._samples],
                )
            elif isinstance(logger, TensorBoardLogger):
                for i, image in enumerate(drawn):
                    logger.experiment.add_image(f"val/images/{i}", image, global_step=step)
        if self.save_dir is not None:
            from torchvision.io import write_png

            self.save_dir.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(drawn):
                write_png(image, str(self.save_dir / f"epoch_{epoch:03d}_{i}.png"))


class PerClassAPTable(Callback):
    """The per-class AP of each validation (and of the test) as a table.

    W&B: a ``wandb.Table`` (class, AP, AP50) under ``val/ap_table``; TensorBoard: a markdown text;
    the console: the test table at the end of ``trainer.test``.
    """

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = self._log(trainer, pl_module, "test")
        if rows and trainer.is_global_zero:
            width = max(len(name) for name, _, _ in rows)
            lines = [f"{'class':<{width}}  {'AP':>6}  {'AP50':>6}"]
            lines += [f"{name:<{width}}  {ap:6.3f}  {ap50:6.3f}" for name, ap, ap50 in rows]
            log.info("per-class test AP:\n%s", "\n".join(lines))

    @staticmethod
    def _log(trainer: Trainer, pl_module: LightningModule, split: str) -> list[tuple[str, float, float]]:
        metrics = getattr(pl_module, "last_metrics", {}).get(split)
        if not metrics or not trainer.is_global_zero:
            return []
        rows = [(name, metrics[f"ap/{name}"], metrics[f"ap50/{name}"]) for name in pl_module.class_names]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                data = [[name, _none_if_nan(ap), _none_if_nan(ap50)] for name, ap, ap50 in rows]
                logger.log_table(f"{split}/ap_table", columns=["class", "AP", "AP50"], data=data, step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                text = "| class | AP | AP50 |\n|---|---|---|\n"
                text += "\n".join(f"| {name} | {ap:.3f} | {ap50:.3f} |" for name, ap, ap50 in rows)
                logger.experiment.add_text(f"{split}/ap_table", text, global_step=trainer.global_step)
        return rows


class ValidationPlots(Callback):
    """Plots of each validation: PNGs in ``save_dir/epoch_XXX/`` and, at the trainer's global step,
    W&B / TensorBoard images under ``val/plots/<name>``:

    - ``pr_curves``: per-class precision-recall at ``iou_threshold``, from the COCO evaluation the
      module has just run (``pl_module.evaluators["val"].last_result``);
    - ``confusion_matrix``: ``[true, predicted]`` with a background row and column
      (``frcnn.metrics.confusion``), over the whole validation set;
    - ``images``: the first ``num_images`` validation images of rank 0, ground truth beside the
      detections scoring >= ``score_threshold``.

    Under DDP the confusion matrix counts each image once, as the evaluators do: ``DistributedSampler``
    pads the last batches by repeating images, so each rank keeps its images' counts by image id and
    the ranks' dicts are merged first-wins (``gather_per_image``, a collective every rank joins in
    ``on_validation_end``); only rank 0 draws and writes. ``matrix`` holds the last one, on every rank.

    Args:
        save_dir: where the PNGs go; None: only the loggers.
        num_images: validation images in the grid.
        iou_threshold: of the PR curves (a COCO threshold: 0.5, 0.55, ..., 0.95) and of the
            confusion matrix's matching.
        score_threshold: detections below it are neither in the confusion matrix nor drawn.
        every_n_epochs: plot the validations of every n-th epoch; the others cost nothing.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        num_images: int = 4,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        every_n_epochs: int = 1,
    ) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.num_images = int(num_images)
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.every_n_epochs = int(every_n_epochs)
        if not any(math.isclose(self.iou_threshold, 0.5 + 0.05 * i) for i in range(10)):
            raise ValueError(f"iou_threshold {iou_threshold}: the PR curves need a COCO one, 0.5, 0.55, ..., 0.95")
        self.matrix: Tensor | None = None  # (K + 1, K + 1) int64 of the last plotted validation
        self._cells: dict[int, Tensor] = {}  # image_id -> (n,) flat matrix index of each of its counts
        self._samples: list[tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]] = []  # image, target, pred

    def _plots_this_epoch(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._cells, self._samples = {}, []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._plots_this_epoch(trainer):
            return
        images, targets = batch
        num_classes = len(pl_module.class_names)
        for image, target, pred in zip(images, targets, outputs):
            image_id = int(target["image_id"])
            if image_id not in self._cells:
                counts = image_confusion(pred, target, num_classes, self.iou_threshold, self.score_threshold)
                self._cells[image_id] = _cell_indices(counts)
            if trainer.is_global_zero and len(self._samples) < self.num_images:
                cpu = {k: v.detach().cpu() for k, v in target.items()}
                self._samples.append((image.detach().cpu(), cpu, {k: v.detach().cpu() for k, v in pred.items()}))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._plots_this_epoch(trainer):
            return
        names = pl_module.class_names
        size = len(names) + 1
        cells = [torch.zeros(0, dtype=torch.int64), *gather_per_image(self._cells).values()]  # collective
        self.matrix = torch.bincount(torch.cat(cells), minlength=size * size).view(size, size)
        if not trainer.is_global_zero:
            return
        figures = {"confusion_matrix": lambda: plot_confusion_matrix(self.matrix, names)}
        evaluator = getattr(pl_module, "evaluators", {}).get("val")
        if evaluator is not None and evaluator.last_result is not None:
            curves = evaluator.last_result.pr_curves(self.iou_threshold)
            title = f"precision-recall at IoU {self.iou_threshold:g}"
            figures["pr_curves"] = lambda: plot_pr_curves(curves, title=title)
        if self._samples:
            images, targets, preds = (list(column) for column in zip(*self._samples))
            figures["images"] = lambda: plot_image_grid(
                images, preds, targets, names, score_threshold=self.score_threshold, max_images=self.num_images
            )
        pixels = {name: _render(build()) for name, build in figures.items()}  # one figure alive at a time
        self._write(pixels, trainer)

    def _write(self, pixels: dict[str, np.ndarray], trainer: Trainer) -> None:
        """{name: (H, W, 3) uint8} -> PNGs in save_dir/epoch_XXX and the loggers."""
        if self.save_dir is not None:
            folder = self.save_dir / f"epoch_{trainer.current_epoch:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for name, rgb in pixels.items():
                Image.fromarray(rgb).save(folder / f"{name}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                images = {f"val/plots/{name}": wandb.Image(rgb) for name, rgb in pixels.items()}
                logger.log_metrics(images, step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                for name, rgb in pixels.items():
                    logger.experiment.add_image(f"val/plots/{name}", rgb, trainer.global_step, dataformats="HWC")


def _cell_indices(matrix: Tensor) -> Tensor:
    """(K + 1, K + 1) counts -> (n,) int64, the flat index of the cell of each of the n counts:
    an image's few matches and misses, rather than a whole matrix per image."""
    counts = matrix.flatten()
    return torch.repeat_interleave(torch.arange(counts.numel()), counts)


def _render(figure: Figure) -> np.ndarray:
    """A figure on its Agg canvas -> (H, W, 3) uint8. Made without pyplot, the figure is in no
    registry: it is freed once unreferenced (``Figure.clear`` would only cost time)."""
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
