"""The per-class AP of each validation (and of the test) as a table."""

from __future__ import annotations

import logging
import math

from lightning import Callback, LightningModule, Trainer

from frcnn.app.callbacks.media import log_table

log = logging.getLogger(__name__)


def _none_if_nan(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


class PerClassAPTable(Callback):
    """W&B: a ``wandb.Table`` (class, AP, AP50) under ``<split>/ap_table``; TensorBoard: the same as
    markdown text; the console: the test table at the end of ``trainer.test``. Reads the module's
    ``last_metrics[split]`` (its last COCO evaluation)."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._log(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rows = self._log(trainer, pl_module, "test")
        if rows:
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
        table = [[name, _none_if_nan(ap), _none_if_nan(ap50)] for name, ap, ap50 in rows]
        log_table(trainer, f"{split}/ap_table", ["class", "AP", "AP50"], table)
        return rows
