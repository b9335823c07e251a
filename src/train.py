"""Train a detector: ``python src/train.py [group=option ...] [key=value ...]``.

With no arguments: the fast default run (``experiment=shapes_fast``: the tiny backbone on synthetic
shapes, on the CPU). Examples::

    python src/train.py experiment=coco_resnet50 trainer=ddp trainer.devices=4
    python src/train.py -m optimizer.lr=1e-3,1e-2              # one run directory per value
    python src/train.py -m hparams_search=optuna               # Optuna over lr and loss weights
    python src/train.py ckpt_path=outputs/train/runs/<run>/checkpoints/last.ckpt   # resume

Seeds everything, builds data, detector, module, callbacks, loggers and trainer from the config,
fits, tests on the best checkpoint (or the final step's, without validation), and returns
``optimized_metric`` for Hydra sweeps. However the fit ends (max_steps, early stopping, SIGTERM,
Ctrl-C, an error) ``last.ckpt`` holds its final step; errors the user can fix print one block
(``frcnn.app.errors``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

# ${paths.root_dir}: the repository root, whatever directory the command runs from.
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from frcnn.app import wandb_callback  # noqa: E402
from frcnn.app.build import build_model  # noqa: E402
from frcnn.app.callbacks import LastCheckpoint  # noqa: E402
from frcnn.app.distributed import distributed_job  # noqa: E402
from frcnn.app.errors import report_errors  # noqa: E402
from frcnn.app.instantiate import (  # noqa: E402
    finish_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    log_hyperparameters,
    metric_value,
    print_config,
)
from frcnn.app.runtime import setup_runtime  # noqa: E402
from frcnn.tools.auto_anchors import resolve_auto_anchors  # noqa: E402

log = logging.getLogger(__name__)


def checkpoint_to_test(cfg: DictConfig, trainer: L.Trainer) -> str:
    """The weights to test, said in the log: after training, the best checkpoint by val/map, else
    (no validation ran) last.ckpt, the final step's; without training, ``ckpt_path``."""
    if not cfg.get("train"):
        return cfg.get("ckpt_path") or ""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        log.info("testing the best checkpoint by val/map: %s", best)
        return best
    last = next((c.last_model_path for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), "")
    if last:
        log.warning("no best checkpoint (no validation ran): testing the final step's weights, %s (global step %d)",
                    last, trainer.global_step)
        return last
    log.warning("no checkpoint written (checkpointing off): testing the weights in memory (global step %d)",
                trainer.global_step)
    return ""


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit and test as ``cfg`` says; returns (metrics, the built objects)."""
    setup_runtime(cfg)

    log.info("data <%s>", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="all")
    if cfg.data.get("num_classes", 0) is None:  # classes: auto: K is known once the sources are built
        cfg.data.num_classes = datamodule.num_classes
    resolve_auto_anchors(cfg, datamodule)  # anchor sizes / ratios `auto`: fitted to the training boxes
    log.info("model <%s>, backbone <%s>", cfg.model._target_, cfg.backbone.get("name"))
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else None
    model = build_model(cfg.model, cfg.get("init_from"), choices)  # + init_from (torchvision COCO weights)
    # A partial, then called: Hydra would try to merge an nn.Module passed as a keyword into the config.
    module = hydra.utils.instantiate(cfg.module, _partial_=True)(
        model=model,
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(cfg.schedule) if cfg.get("schedule") else None,
        class_names=datamodule.class_names,
        label_to_category_id=datamodule.label_to_category_id,
        model_config=OmegaConf.to_container(cfg.model, resolve=True),
        data_config=OmegaConf.to_container(cfg.data, resolve=True),
    )
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    loggers = instantiate_loggers(cfg.get("logger"), ckpt_path=cfg.get("ckpt_path"))
    callbacks += wandb_callback.callbacks_for(loggers)  # the W&B run id into checkpoints; artifacts
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    log.info("optimizer <%s> lr=%s (rank %d of %d)", cfg.optimizer._target_, cfg.optimizer.get("lr"),
             trainer.global_rank, trainer.world_size)
    objects = {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer}
    log_hyperparameters(cfg, trainer, module)

    with distributed_job():
        try:
            if cfg.get("train"):
                trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
            metrics = dict(trainer.callback_metrics)
            if cfg.get("test"):
                ckpt = checkpoint_to_test(cfg, trainer)
                trainer.test(module, datamodule=datamodule, ckpt_path=ckpt or None, weights_only=True)
                metrics.update(trainer.callback_metrics)
                log.info("tested checkpoint: %s", ckpt or "-")
        finally:
            finish_loggers(trainer)
    return metrics, objects


@hydra.main(version_base="1.3", config_path="../conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    if cfg.get("print_config"):
        print_config(cfg)
    metrics, _ = report_errors(train, cfg)  # a failure the user can fix: one block, no stack trace
    return metric_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
