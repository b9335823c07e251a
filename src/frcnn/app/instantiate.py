"""Building the run's collaborators from config (callbacks, loggers), and what a run reports back
(its hyperparameters to the loggers, the config tree, the metric a sweep optimises)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning import Callback, Trainer
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from frcnn.app.wandb import WANDB_TARGETS, wandb_offline

log = logging.getLogger(__name__)


def instantiate_callbacks(config: DictConfig | None) -> list[Callback]:
    """Every ``_target_`` node of ``config`` (the ``callbacks`` group) -> a callback."""
    if not config:
        return []
    return [hydra.utils.instantiate(node) for node in config.values() if isinstance(node, DictConfig) and "_target_" in node]


def instantiate_loggers(config: DictConfig | None, ckpt_path: str | None = None) -> list[Logger]:
    """Every ``_target_`` node of ``config`` (the ``logger`` group) -> a logger; W&B's ``offline``
    is resolved by ``wandb_offline``; ``WandbRunLogger`` gets ``ckpt_path`` (the checkpoint training
    resumes from) to continue its W&B run (``frcnn.app.wandb_run``)."""
    if not config:
        return []
    loggers = []
    for node in config.values():
        if not (isinstance(node, DictConfig) and "_target_" in node):
            continue
        if node._target_ in WANDB_TARGETS:
            node = node.copy()
            with open_dict(node):
                node.offline = wandb_offline(node.get("offline"))
                if node._target_ == WANDB_TARGETS[2]:
                    node.ckpt_path = ckpt_path
            Path(node.save_dir).mkdir(parents=True, exist_ok=True)
            log.info("W&B logger: %s", "offline (sync later with `wandb sync`)" if node.offline else "online")
        loggers.append(hydra.utils.instantiate(node))
    return loggers


@rank_zero_only
def log_hyperparameters(cfg: DictConfig, trainer: Trainer, module: torch.nn.Module) -> None:
    """The whole resolved config plus parameter counts -> every logger (W&B's run config)."""
    if not trainer.loggers:
        return
    without_hydra = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    hparams: dict[str, Any] = OmegaConf.to_container(without_hydra, resolve=True)  # type: ignore[assignment]
    hparams["params/total"] = sum(p.numel() for p in module.parameters())
    hparams["params/trainable"] = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for logger in trainer.loggers:
        logger.log_hyperparams(hparams)


def finish_loggers(trainer: Trainer) -> None:
    """Close the W&B run, so the next job of a multirun starts its own."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers):
        import wandb

        wandb.finish()


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value a sweep optimises (None, with a warning, when it was never logged)."""
    if not name:
        return None
    if name not in metrics:
        log.warning("optimized_metric %r was not logged (no validation?); logged: %s", name, sorted(metrics))
        return None
    value = metrics[name]
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def print_config(cfg: DictConfig, keys: tuple[str, ...] = ("data", "backbone", "model", "optimizer", "schedule",
                                                            "trainer", "callbacks", "logger", "paths")) -> None:
    """Rich tree of the main config groups (rank 0)."""
    if not rank_zero_only.rank == 0:
        return
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", guide_style="dim")
    for key in [*keys, *(k for k in cfg if k not in keys and k != "hydra")]:
        if key not in cfg:
            continue
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=False) if isinstance(node, DictConfig) else str(node)
        tree.add(key).add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)
