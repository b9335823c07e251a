"""Helpers of the entry points: build callbacks and loggers from config, load checkpoints safely,
keep W&B offline without credentials, and keep Lightning's DDP launcher inside a Hydra multirun job.
"""

from __future__ import annotations

import contextlib
import logging
import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

WANDB_TARGETS = ("lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.loggers.wandb.WandbLogger",
                 "frcnn.app.wandb_run.WandbRunLogger")


# --- building from config -----------------------------------------------------------------------


def instantiate_callbacks(config: DictConfig | None) -> list[Callback]:
    """Every ``_target_`` node of ``config`` (the ``callbacks`` group) -> a callback."""
    if not config:
        return []
    return [hydra.utils.instantiate(node) for node in config.values() if isinstance(node, DictConfig) and "_target_" in node]


def wandb_has_credentials() -> bool:
    """True when W&B can log in without asking: ``WANDB_API_KEY`` or a ``wandb login`` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_offline(offline: bool | None) -> bool:
    """Resolve the W&B logger's ``offline`` (null: decide here). Online needs credentials.

    ``WANDB_MODE=offline`` / ``dryrun`` -> True; ``disabled`` -> False, so that Lightning leaves the
    variable alone and W&B itself stays disabled. Otherwise (``WANDB_MODE=online`` or unset) online
    only with credentials, unless ``offline: true`` forces offline. Without credentials W&B would
    ask for a login: this never happens, the run goes offline with a warning instead.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun"):
        return True
    if mode == "disabled":
        return False
    if not wandb_has_credentials():
        if mode == "online" or offline is False:
            log.warning("W&B online was asked for, but there are no credentials (WANDB_API_KEY or `wandb login`): "
                        "logging offline instead")
        return True
    return bool(offline)


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


# --- checkpoints ----------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, nothing is unpickled.

    Our checkpoints (``DetectionModule`` + Lightning's loop state) hold nothing else. A file that
    needs arbitrary unpickling is refused with the reason, never executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError / RuntimeError
        raise ValueError(
            f"{path} is not a plain checkpoint (torch.load(weights_only=True) refused it: {error}). "
            "Only load files you trust; this tool never unpickles arbitrary objects."
        ) from error


def build_model(model_config: DictConfig | Mapping):
    """Instantiate the detector from ``cfg.model``, then load ``model.init_from`` (a torchvision
    COCO checkpoint name or a local ``.pth``; see ``frcnn.torchvision_import``) when it is set."""
    from frcnn.torchvision_import import apply_init_from

    config = OmegaConf.to_container(OmegaConf.create(model_config) if not isinstance(model_config, DictConfig)
                                    else model_config, resolve=True)
    init_from = config.pop("init_from", None)
    return apply_init_from(hydra.utils.instantiate(config, _convert_="all"), init_from)


def model_config_for_loading(model_config: Mapping) -> dict:
    """The checkpoint's model config with the backbone's pretrained weights switched off: the
    checkpoint's state dict replaces them anyway, and no download or shared file is needed."""
    config = OmegaConf.create(dict(model_config))
    config.pop("init_from", None)  # the checkpoint's weights replace whatever training started from
    backbone = config.get("backbone")
    if isinstance(backbone, DictConfig):
        for key in ("weights", "weights_path"):
            if key in backbone:
                backbone[key] = None
    return OmegaConf.to_container(config)  # type: ignore[return-value]


def inference_module(cfg: DictConfig):
    """eval.py's and predict.py's start: the seed and CPU threads, then ``cfg.ckpt_path``'s module,
    its detector rewritten for inference (``frcnn.inference``) unless ``inference_rewrite=false``."""
    from frcnn.inference import optimize_for_inference

    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(cfg.torch_threads)
    module = module_from_checkpoint(cfg.ckpt_path)
    if cfg.get("inference_rewrite", True):  # BatchNorm folded, channels-last
        optimize_for_inference(module.model)
    return module


def module_from_checkpoint(path: str | Path):
    """Rebuild a ``DetectionModule`` (detector, class names, label map, and the training run's
    data config in ``hparams.data_config``) from one of its checkpoints."""
    from frcnn.app.module import DetectionModule

    checkpoint = load_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    if "model_config" not in hparams or not hparams["model_config"]:
        raise ValueError(f"{path}: no model_config in the checkpoint's hyper_parameters (not a DetectionModule checkpoint?)")
    model = build_model(model_config_for_loading(hparams["model_config"]))
    module = DetectionModule(
        model,
        class_names=hparams["class_names"],
        label_to_category_id=hparams["label_to_category_id"],
        model_config=hparams["model_config"],
        data_config=hparams.get("data_config"),
    )
    module.load_state_dict(checkpoint["state_dict"])
    return module


# --- Hydra multirun x Lightning DDP -----------------------------------------------------------------


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "RANK")


@contextlib.contextmanager
def distributed_job():
    """One Hydra job = one DDP world, whatever ran before it in this process.

    On entry, inside a multirun, Lightning's DDP launcher is pointed at this job
    (``keep_ddp_in_this_job``). On exit the process group is destroyed and the DDP variables that
    Lightning put into ``os.environ`` (``LOCAL_RANK``...) are restored: otherwise the next job of a
    multirun would reuse the finished world and believe its ranks were started externally.
    """
    saved_env = {key: os.environ.get(key) for key in _DDP_ENV}
    saved_argv = list(sys.argv)
    keep_ddp_in_this_job()
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.argv = saved_argv


def keep_ddp_in_this_job() -> None:
    """Make Lightning's DDP launcher start the other ranks inside THIS Hydra job.

    ``strategy=ddp`` re-runs the script for ranks > 0 with ``sys.argv`` plus
    ``hydra.run.dir=<HydraConfig run.dir>``. In a multirun, ``sys.argv`` is the whole sweep
    (``-m optimizer.lr=1e-3,1e-2``) and ``run.dir`` is not this job's directory, so every rank would
    start a sweep of its own in new directories. Here argv becomes this job's overrides, run as a
    single run in the job's output directory. A no-op outside a Hydra multirun.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    flags, skip_next = [], False
    for i, arg in enumerate(sys.argv[1:], start=1):
        if skip_next:
            skip_next = False
            continue
        if arg in ("-cp", "-cn", "-cd", "--config-path", "--config-name", "--config-dir"):
            flags += [arg, sys.argv[i + 1]]
            skip_next = True
        elif arg.startswith(("--config-path=", "--config-name=", "--config-dir=")):
            flags.append(arg)
    sys.argv = [sys.argv[0], *flags, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):  # HydraConfig is read-only
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
