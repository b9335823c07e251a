"""``WandbRunCallback``: the W&B run id into every checkpoint; best and last as W&B artifacts.

``src/train.py`` adds it whenever the loggers hold a ``WandbRunLogger`` (``callbacks_for``), so a
checkpoint of a W&B run always knows its run, whatever the ``callbacks`` config says.

- Every checkpoint gets ``checkpoint["wandb_run"]`` (``frcnn.app.wandb_run.run_state``): the run id,
  W&B's history step, the global step, the offline run folder, and the metrics of that moment
  (``trainer.callback_metrics``), so an artifact's metadata describes exactly its own file.
- With ``log_model``, at the end of fit: the best checkpoint (the first ``ModelCheckpoint`` with a
  ``monitor``) with alias ``best`` and the last one (``LastCheckpoint``'s or a ``save_last`` file, else
  the newest file of a ``ModelCheckpoint`` without ``monitor``) with alias ``last``, as versions of the artifact
  ``model-<run id>`` (type ``model``). Metadata: ``class_names``, ``label_to_category_id``,
  ``metrics``, ``global_step``, ``epoch``, the monitor and its score. Offline, the file is copied
  into the offline run folder (``artifacts/<alias>/``) and staged from there, so ``wandb sync``
  finds it even after the checkpoint folder is rewritten or moved.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger

from frcnn.app.wandb_run import CHECKPOINT_KEY, WandbRunLogger, run_state

log = logging.getLogger(__name__)


def callbacks_for(loggers: list[Logger]) -> list[Callback]:
    """The callback for the first ``WandbRunLogger`` among ``loggers`` (none without one)."""
    logger = next((lg for lg in loggers if isinstance(lg, WandbRunLogger)), None)
    return [WandbRunCallback(logger)] if logger is not None else []


def _scalars(metrics: dict) -> dict[str, float]:
    return {key: float(value) for key, value in metrics.items()
            if not isinstance(value, torch.Tensor) or value.numel() == 1}


def checkpoints_to_upload(trainer: Trainer) -> dict[str, Path]:
    """alias -> file: ``best`` (by the first monitored ``ModelCheckpoint``) and ``last``."""
    callbacks = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]
    files: dict[str, Path] = {}
    best = next((c for c in callbacks if c.monitor is not None and c.best_model_path), None)
    if best is not None:
        files["best"] = Path(best.best_model_path)
    # LastCheckpoint (a Checkpoint, not a ModelCheckpoint) writes last.ckpt however the fit ends
    last = next((c.last_model_path for c in trainer.checkpoint_callbacks if getattr(c, "last_model_path", "")), None)
    last = last or next((c.best_model_path for c in callbacks if c.monitor is None and c.best_model_path), None)
    if last:
        files["last"] = Path(last)
    return {alias: path for alias, path in files.items() if path.is_file()}


def artifact_metadata(path: Path) -> dict:
    """What a checkpoint file says about itself: classes, metrics, step, epoch, monitor and score."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    hparams = checkpoint.get("hyper_parameters") or {}
    stored = checkpoint.get(CHECKPOINT_KEY) or {}
    monitor = next((state for key, state in (checkpoint.get("callbacks") or {}).items()
                    if key.startswith("ModelCheckpoint") and state.get("monitor")), {})
    score = monitor.get("current_score")
    return {
        "class_names": list(hparams.get("class_names", [])),
        "label_to_category_id": {str(k): int(v) for k, v in (hparams.get("label_to_category_id") or {}).items()},
        "metrics": dict(stored.get("metrics", {})),
        "global_step": int(checkpoint.get("global_step", 0)),
        "epoch": int(checkpoint.get("epoch", 0)),
        "monitor": monitor.get("monitor"),
        "score": float(score) if score is not None else None,
        "file": path.name,
    }


class WandbRunCallback(Callback):
    """Writes the run into checkpoints and, with ``logger.log_model_artifacts``, uploads best and last."""

    def __init__(self, logger: WandbRunLogger) -> None:
        self.logger = logger

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if trainer.is_global_zero:  # the other ranks hold a dummy run; rank 0 writes the file
            checkpoint[CHECKPOINT_KEY] = run_state(self.logger.experiment, trainer.global_step,
                                                   _scalars(trainer.callback_metrics))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not (self.logger.log_model_artifacts and trainer.is_global_zero):
            return
        import wandb

        run = self.logger.experiment
        files = checkpoints_to_upload(trainer)
        if not files:
            log.warning("logger.wandb.log_model=true, but no checkpoint was written: nothing uploaded")
        aliases_of: dict[Path, list[str]] = {}
        for alias, path in files.items():
            aliases_of.setdefault(path, []).append(alias)
        for path, aliases in aliases_of.items():
            artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=artifact_metadata(path))
            if getattr(run, "offline", False):
                staged = Path(run.dir).parent / "artifacts" / aliases[0] / path.name
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staged)
                artifact.add_file(str(staged), name=path.name, policy="immutable")
            else:
                artifact.add_file(str(path), name=path.name)
            run.log_artifact(artifact, aliases=aliases)
            log.info("W&B artifact model-%s:%s <- %s", run.id, ",".join(aliases), path)
