"""The LightningModule: trains a detector, logs its four losses, evaluates COCO mAP.

Batches follow docs/contracts.md: ``(images, targets)`` with ``images`` a list of (3, H_i, W_i)
float tensors in [0, 1] and ``targets`` a list of dicts (``boxes`` (G_i, 4) xyxy pixels, ``labels``
(G_i,) int64 in 1..K, ``image_id``, ``ignore_boxes``, ``ignore_labels``). Every ``self.log`` passes
``batch_size=`` because Lightning cannot infer it from lists of dicts.

Validation and test run ONE forward per batch in eval mode with the targets: the detector returns
the losses and the detections together (``frcnn.modeling.output``), so ``val/loss`` and ``val/map`` come
from the same pass.

Logged keys (``split/name``):
    train/loss_rpn_cls, train/loss_rpn_reg, train/loss_cls, train/loss_box_reg, train/loss, train/lr
    val/<same losses>, val/map, val/map_50, val/map_75, val/map_{small,medium,large}, val/mar_100,
    val/ap/<class name>;  test/<same as val>
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from lightning import LightningModule
from lightning.fabric.utilities.warnings import PossibleUserWarning
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.optim import Optimizer

from frcnn.app.checkpoint_file import CHECKPOINT_FORMAT, FORMAT_KEY
from frcnn.app.optim import build_optimizer
from frcnn.evaluation import COCOEvaluator

# The COCO metrics are gathered over the ranks by the evaluator (the same value on every rank), so
# Lightning's advice to reduce epoch-level values with sync_dist does not apply to them.
warnings.filterwarnings(
    "ignore", message=r"It is recommended to use `self.log\('(val|test)/(map|mar|ap)", category=PossibleUserWarning
)

# The COCO summary numbers logged as scalars; the rest of COCOEvaluator.compute() stays in
# `last_metrics` for the callbacks (per-class table) and for eval.py's printout.
SUMMARY_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")

Batch = tuple[Sequence[Tensor], Sequence[dict[str, Tensor]]]


class DetectionModule(LightningModule):
    """Wraps a detector (``frcnn.modeling.FasterRCNN`` or ``RPNDetector``) for Lightning.

    Args:
        model: the detector, built by Hydra from ``conf/model`` (its ``loss_weights`` weight ``loss``).
        optimizer: partial ``(params=) -> Optimizer`` (``conf/optimizer``); None for eval / predict.
        scheduler: partial ``(optimizer, total_steps=) -> LRScheduler`` stepped every optimizer
            step (``conf/schedule``); None for a constant lr.
        class_names: K names; ``class_names[k]`` is label k + 1.
        label_to_category_id: label -> the dataset's category id (COCO's sparse ids); identity
            when None.
        model_config: the resolved model config, stored in the checkpoint so eval.py and
            predict.py rebuild the same detector without unpickling anything.
        data_config: the resolved data config, stored likewise: eval.py without ``data=``
            evaluates on the training run's validation data with its batch size.
        norm_bias_weight_decay: weight decay of norm layers and biases (None: the optimizer's).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., Optimizer] | None = None,
        scheduler: Callable[..., torch.optim.lr_scheduler.LRScheduler] | None = None,
        class_names: Sequence[str] = (),
        label_to_category_id: Mapping[int, int] | None = None,
        model_config: Mapping | None = None,
        data_config: Mapping | None = None,
        norm_bias_weight_decay: float | None = 0.0,
    ) -> None:
        super().__init__()
        class_names = [str(name) for name in class_names]
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
        if label_to_category_id is None:
            label_to_category_id = {label: label for label in range(1, len(class_names) + 1)}
        # Only plain values go to hparams (and so to the checkpoint): it loads with weights_only=True.
        self.save_hyperparameters(
            {
                "class_names": class_names,
                "label_to_category_id": {int(k): int(v) for k, v in label_to_category_id.items()},
                "model_config": _plain(model_config),
                "data_config": _plain(data_config),
                "norm_bias_weight_decay": norm_bias_weight_decay,
            },
            logger=False,
        )
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.evaluators = {split: self._new_evaluator() for split in ("val", "test")}
        # {split: COCOEvaluator.compute() of the last finished epoch}, read by callbacks and eval.py.
        self.last_metrics: dict[str, dict[str, float]] = {}
        # Detached losses of the current training step, for the non-finite loss guard's message.
        self.last_losses: dict[str, Tensor] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return dict(self.hparams.label_to_category_id)

    def _new_evaluator(self) -> COCOEvaluator:
        return COCOEvaluator(self.class_names, self.label_to_category_id)

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None):
        """The detector's forward: a ``DetectorOutput``."""
        return self.model(images, targets)

    # --- training ---------------------------------------------------------------------------

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, targets).losses
        self.last_losses = {name: value.detach() for name, value in losses.items()}
        batch_size = len(images)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=False, batch_size=batch_size)
        return losses["loss"]

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("DetectionModule was built without an optimizer (eval / predict only)")
        optimizer = build_optimizer(self.optimizer_factory, self.model, self.hparams.norm_bias_weight_decay)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=self._total_steps())
        # Step-based: the seed's schedule is in iterations (1e-3 -> 1e-4 at 50k steps).
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def _total_steps(self) -> int | None:
        steps = self.trainer.estimated_stepping_batches
        return None if steps is None or math.isinf(steps) else int(steps)

    # --- validation and test: losses and detections from one pass -----------------------------

    def _eval_step(self, split: str, batch: Batch) -> list[dict[str, Tensor]]:
        images, targets = batch
        output = self.model(images, targets, return_detections=True)
        for name, value in output.losses.items():
            self.log(f"{split}/{name}", value, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(images))
        self.evaluators[split].update(output.detections, targets)
        return output.detections

    def _eval_epoch_end(self, split: str) -> None:
        evaluator = self.evaluators[split]
        # Collective under DDP: the same numbers on every rank. The records stay until the next
        # epoch starts, so `evaluator.summary()` / `last_result` remain readable (eval.py prints them).
        metrics = evaluator.compute()
        self.last_metrics[split] = metrics
        # Already gathered over ranks by the evaluator, so no sync_dist. NaN (no ground truth in
        # an area range) is logged as is; per-class NaN (class absent) is left out.
        for key in SUMMARY_KEYS:
            self.log(f"{split}/{key}", float(metrics[key]), prog_bar=key in ("map", "map_50"))
        for name in self.class_names:
            value = metrics[f"ap/{name}"]
            if not math.isnan(value):
                self.log(f"{split}/ap/{name}", float(value))

    def on_validation_epoch_start(self) -> None:
        self.evaluators["val"].reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        return self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self.evaluators["test"].reset()

    def test_step(self, batch: Batch, batch_idx: int) -> list[dict[str, Tensor]]:
        return self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[FORMAT_KEY] = CHECKPOINT_FORMAT  # a reader refuses formats newer than its own, by name

    # --- prediction ---------------------------------------------------------------------------

    def predict_step(self, batch, batch_idx: int) -> list[dict]:
        """batch: ``(images, metas)`` with any per-image dicts (file names...) -> per image the
        meta merged with ``boxes`` (D, 4), ``scores`` (D,), ``labels`` (D,) on the CPU."""
        images, metas = batch
        detections = self.model(images).detections
        return [{**meta, **{k: v.cpu() for k, v in det.items()}} for meta, det in zip(metas, detections)]


def _plain(config: Mapping | None) -> dict | None:
    """A config (OmegaConf or nested mappings) -> plain dicts and lists, safe for weights_only."""
    if config is None:
        return None
    return OmegaConf.to_container(OmegaConf.create(dict(config)), resolve=True)
