"""Checkpoints of ``src/train.py`` back into a working detector: read safely, configs migrated,
model rebuilt, optionally rewritten for inference (``src/eval.py``, ``src/predict.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig

from frcnn.app.build import ConfigError, build_model
from frcnn.app.checkpoint_file import CheckpointError, read_checkpoint
from frcnn.app.legacy import migrate
from frcnn.app.runtime import setup_runtime


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)``: tensors and plain containers only, nothing is unpickled.

    Our checkpoints (``DetectionModule`` + Lightning's loop state) hold nothing else. A file that is
    missing, empty, truncated, not ours or from a newer version raises a ``CheckpointError`` that says
    which (``frcnn.app.checkpoint_file.read_checkpoint``); one that needs unpickling is never executed.
    """
    return read_checkpoint(path)


def model_config_for_loading(model_config: Mapping) -> dict:
    """A checkpoint's model config in today's layout (``frcnn.app.legacy``), with the backbone's
    pretrained weights switched off: the checkpoint's state dict replaces them anyway, and no
    download or shared file is needed."""
    config = migrate(model_config)
    backbone = config.get("backbone")
    if isinstance(backbone, dict):
        for key in ("weights", "weights_path"):
            if key in backbone:
                backbone[key] = None
    return config


def module_from_checkpoint(path: str | Path):
    """Rebuild a ``DetectionModule`` (detector, class names, label map, and the training run's
    data config in ``hparams.data_config``) from one of its checkpoints, old layouts included."""
    from frcnn.app.module import DetectionModule

    checkpoint = load_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    try:  # a checkpoint of ours that this code cannot rebuild: another (incompatible) version wrote it
        model = build_model(model_config_for_loading(hparams["model_config"]))
        module = DetectionModule(
            model,
            class_names=hparams["class_names"],
            label_to_category_id=hparams["label_to_category_id"],
            model_config=migrate(hparams["model_config"]),
            data_config=migrate(hparams.get("data_config")),
        )
        module.load_state_dict(checkpoint["state_dict"])
    except (ConfigError, InstantiationException, KeyError, TypeError, ValueError, RuntimeError, ImportError) as error:
        lines = str(error).strip().splitlines()
        raise CheckpointError(
            f"{path} was written by an incompatible version of this project: this version cannot rebuild its "
            f"detector ({type(error).__name__}: {' '.join(lines[:6])[:600]}). Use the code that trained it, or retrain"
        ) from error
    return module


def with_tta(model, tta: Mapping | None):
    """``model`` wrapped in test-time augmentation (``frcnn.modeling.tta``) when ``tta`` (the
    ``conf/tta`` block: flip, scales, merge, iou_threshold) asks for a flip or scales; else itself."""
    if not tta or not (tta.get("flip") or tta.get("scales")):
        return model
    from frcnn.modeling.tta import TestTimeAugmentation

    return TestTimeAugmentation(model, scales=tta.get("scales"), flip=bool(tta.get("flip")),
                                merge=tta.get("merge", "nms"), iou_threshold=float(tta.get("iou_threshold", 0.55)))


def inference_module(cfg: DictConfig):
    """eval.py's and predict.py's start: the seed and CPU threads, then ``cfg.ckpt_path``'s module,
    its detector rewritten for inference (``frcnn.layers.inference_rewrite``) unless
    ``inference_rewrite=false``, and wrapped in test-time augmentation when ``cfg.tta`` says so."""
    from frcnn.layers.inference_rewrite import optimize_for_inference

    setup_runtime(cfg)
    module = module_from_checkpoint(cfg.ckpt_path)
    if cfg.get("inference_rewrite", True):  # BatchNorm folded, channels-last
        optimize_for_inference(module.model)
    module.model = with_tta(module.model, cfg.get("tta"))
    return module
