"""Plots of each validation: per-class precision-recall curves and the confusion matrix."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from matplotlib.figure import Figure
from torch import Tensor

from frcnn.app.callbacks.media import log_images, write_pngs
from frcnn.evaluation import gather_per_image, image_confusion, plot_confusion_matrix, plot_pr_curves


class ValidationPlots(Callback):
    """PNGs in ``save_dir/epoch_XXX/`` and W&B / TensorBoard images under ``val/plots/<name>``:

    - ``pr_curves``: per-class precision-recall at ``iou_threshold``, from the COCO evaluation the
      module has just run (``pl_module.evaluators["val"].last_result``);
    - ``confusion_matrix``: ``[true, predicted]`` with a background row and column
      (``frcnn.evaluation.confusion``), over the whole validation set.

    Under DDP the confusion matrix counts each image once, as the evaluators do: ``DistributedSampler``
    pads the last batches by repeating images, so each rank keeps its images' counts by image id and
    the ranks' dicts are merged first-wins (``gather_per_image``, a collective every rank joins in
    ``on_validation_end``); only rank 0 draws and writes. ``matrix`` holds the last one, on every rank.

    Args:
        save_dir: where the PNGs go; None: only the loggers.
        iou_threshold: of the PR curves (a COCO threshold: 0.5, 0.55, ..., 0.95) and of the
            confusion matrix's matching.
        score_threshold: detections below it are not in the confusion matrix.
        every_n_epochs: plot the validations of every n-th epoch; the others cost nothing.
    """

    def __init__(
        self,
        save_dir: str | None = None,
        iou_threshold: float = 0.5,
        score_threshold: float = 0.5,
        every_n_epochs: int = 1,
    ) -> None:
        self.save_dir = Path(save_dir) if save_dir else None
        self.iou_threshold = float(iou_threshold)
        self.score_threshold = float(score_threshold)
        self.every_n_epochs = int(every_n_epochs)
        if not any(math.isclose(self.iou_threshold, 0.5 + 0.05 * i) for i in range(10)):
            raise ValueError(f"iou_threshold {iou_threshold}: the PR curves need a COCO one, 0.5, 0.55, ..., 0.95")
        self.matrix: Tensor | None = None  # (K + 1, K + 1) int64 of the last plotted validation
        self._cells: dict[int, Tensor] = {}  # image_id -> (n,) flat matrix index of each of its counts

    def _plots_this_epoch(self, trainer: Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._cells = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._plots_this_epoch(trainer):
            return
        _, targets = batch
        num_classes = len(pl_module.class_names)
        for target, pred in zip(targets, outputs):
            image_id = int(target["image_id"])
            if image_id not in self._cells:
                counts = image_confusion(pred, target, num_classes, self.iou_threshold, self.score_threshold)
                self._cells[image_id] = _cell_indices(counts)

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
        pixels = {name: _render(build()) for name, build in figures.items()}  # one figure alive at a time
        if self.save_dir is not None:
            write_pngs(self.save_dir / f"epoch_{trainer.current_epoch:03d}", pixels)
        log_images(trainer, {f"val/plots/{name}": rgb for name, rgb in pixels.items()})


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
