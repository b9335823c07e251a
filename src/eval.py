"""Evaluate a checkpoint: ``python src/eval.py ckpt_path=<ckpt> [data=<name>] [split=val|test]``.

The detector, its class names and label map come from the checkpoint, read with
``torch.load(weights_only=True)`` (nothing is unpickled). The data is the training run's (its
resolved config travels in the checkpoint) unless ``data=<name>`` picks another with the same
classes. Prints COCO's summary and the per-class AP, logs ``<split>/map`` etc.
to the configured loggers, and returns the metrics.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
import lightning as L  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from frcnn.app.build import ConfigError  # noqa: E402
from frcnn.app.checkpoint import inference_module  # noqa: E402
from frcnn.app.errors import report_errors  # noqa: E402
from frcnn.app.instantiate import finish_loggers, instantiate_loggers, log_hyperparameters, print_config  # noqa: E402

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``cfg.ckpt_path`` on the ``cfg.split`` loader of ``cfg.data``."""
    module = inference_module(cfg)
    data_config = cfg.get("data") or module.hparams.get("data_config")
    if not data_config:
        raise ConfigError(f"{cfg.ckpt_path} carries no data config: pass data=<name>")
    data_config = OmegaConf.to_container(data_config, resolve=True) if isinstance(data_config, DictConfig) else dict(data_config)
    if cfg.get("on_bad_image") is not None:
        data_config["on_bad_image"] = cfg.on_bad_image
    data_config["bad_image_log"] = str(Path(cfg.paths.output_dir) / "bad_images.tsv")  # this run's, not training's
    datamodule: L.LightningDataModule = hydra.utils.instantiate(data_config, _convert_="all")
    if list(datamodule.class_names) != module.class_names:
        raise ConfigError(
            f"{cfg.ckpt_path} was trained on classes {module.class_names}; data <{data_config['_target_']}> has "
            f"{list(datamodule.class_names)}. Pick the matching data=..."
        )
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers, callbacks=[])
    log_hyperparameters(cfg, trainer, module)
    try:
        if cfg.split == "val":
            trainer.validate(module, datamodule=datamodule)
        elif cfg.split == "test":
            trainer.test(module, datamodule=datamodule)
        else:
            raise ConfigError(f"split must be 'val' or 'test', got split={cfg.split!r}")
    finally:
        finish_loggers(trainer)
    evaluator = module.evaluators[cfg.split]
    if trainer.is_global_zero and evaluator.last_result is not None:
        print(f"\n{cfg.ckpt_path} on the {cfg.split} split:\n{evaluator.summary()}\n")
    return dict(trainer.callback_metrics), {"module": module, "datamodule": datamodule, "trainer": trainer}


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    if cfg.get("print_config"):
        print_config(cfg)
    report_errors(evaluate, cfg)  # a failure the user can fix: one block, no stack trace


if __name__ == "__main__":
    main()
