"""One short training run per recipe, checking that its config reaches the code: multi-scale sizes
drawn per step, the repeat-factor batches, anchors fitted before training and kept in the checkpoint.
(EMA: tests/app/test_ema.py; test-time augmentation of eval.py / Detector: tests/api/test_tta.py.)"""

from __future__ import annotations

import pytest
import torch
from lightning import Callback

from frcnn.app.checkpoint import module_from_checkpoint
from frcnn.data import RepeatFactorBatchSampler, repeat_factors
from frcnn.tools.auto_anchors import AUTO, fit_anchors
from tests.app.helpers import compose_config, script, tiny_overrides

QUIET = ["test=false", "callbacks=none", "~logger"]


def quiet_overrides(data_dir) -> list[str]:
    """``tiny_overrides`` without callbacks, loggers or the final test."""
    return [o for o in tiny_overrides(data_dir) if not o.startswith("callbacks.")] + QUIET


class BackboneSizes(Callback):
    """The (H, W) of every batch the backbone sees, in training and in validation."""

    def __init__(self) -> None:
        self.sizes = {"train": [], "val": []}

    def on_fit_start(self, trainer, pl_module) -> None:
        def hook(module, args):
            self.sizes["train" if pl_module.training else "val"].append(tuple(args[0].shape[-2:]))

        pl_module.model.backbone.register_forward_pre_hook(hook)


def train_with(monkeypatch, cfg, *extra: Callback):
    train = script("train")
    original = train.instantiate_callbacks
    monkeypatch.setattr(train, "instantiate_callbacks", lambda config: [*original(config), *extra])
    return train.train(cfg)


def test_multiscale_training_draws_a_size_per_step(tmp_path, data_dir, monkeypatch):
    overrides = [*quiet_overrides(data_dir), "model.transform.min_size=[64,128,192]",
                 "model.transform.max_size=400", "model.transform.test_min_size=128", "data.batch_size=1",
                 "trainer.limit_train_batches=8", "trainer.limit_val_batches=2", "data.aspect_ratio_grouping=false"]
    cfg = compose_config("train", tmp_path / "run", overrides)
    sizes = BackboneSizes()
    train_with(monkeypatch, cfg, sizes)
    shorter = [min(h, w) for h, w in sizes.sizes["train"]]
    # 96..128 px images: the shorter side becomes 64, 128 or 192, padded up to a multiple of 16
    assert len(shorter) == 8 and set(shorter) <= {64, 128, 192} and len(set(shorter)) > 1
    assert {min(size) for size in sizes.sizes["val"]} == {128}  # evaluation at the fixed size


def test_repeat_factor_sampling_reaches_the_training_loader(tmp_path, data_dir):
    cfg = compose_config("train", tmp_path / "run", [*quiet_overrides(data_dir), "data.repeat_factor_threshold=0.9",
                                                      "trainer.limit_val_batches=0"])
    _, objects = script("train").train(cfg)
    loader = objects["trainer"].train_dataloader
    assert isinstance(loader.batch_sampler, RepeatFactorBatchSampler)
    records = objects["datamodule"].datasets["train"].records
    assert loader.batch_sampler.factors == pytest.approx(repeat_factors([r.labels for r in records], 0.9))
    assert loader.batch_sampler.seed == cfg.seed


def test_fit_anchors_by_hand():
    # 12 px boxes centred on stride-16 grid points of a 256 px image (no resize): the smallest default
    # anchor (32 px) reaches IoU 144 / 1024 = 0.14 < 0.5 with each; an 11 or 13 px anchor > 0.8.
    centres = torch.tensor([[32.0, 32.0], [64.0, 128.0], [160.0, 96.0]])
    boxes = torch.cat([centres - 6, centres + 6], dim=1)
    fit = fit_anchors([boxes], [(256, 256)], {"sizes": AUTO, "aspect_ratios": [1.0]}, 16, 256, 256, 0.5)
    assert fit.start_sizes == [32.0, 64.0, 128.0, 256.0, 512.0] and fit.aspect_ratios == [1.0]
    assert fit.coverage_before == 0.0 and fit.coverage_after == 1.0
    assert any(size in (11.0, 13.0) for size in fit.sizes) and len(fit.sizes) == 5


def test_auto_anchors_are_fitted_before_training_and_kept_in_the_checkpoint(tmp_path, data_dir):
    overrides = [*tiny_overrides(data_dir), "test=false", "~logger", "callbacks.validation_images.num_images=0",
                 "model.rpn.anchor_generator.sizes=auto", "model.rpn.anchor_generator.aspect_ratios=auto"]
    cfg = compose_config("train", tmp_path / "run", overrides)
    _, objects = script("train").train(cfg)
    fit = cfg.anchor_fit
    assert fit.coverage_after >= fit.coverage_before and fit.boxes > 0
    model = objects["module"].model
    assert list(model.rpn.anchor_generator.sizes) == list(fit.sizes)
    assert list(model.rpn.anchor_generator.aspect_ratios) == list(fit.aspect_ratios)
    # eval.py / predict.py / export.py rebuild the model from the checkpoint's config: the same anchors
    rebuilt = module_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt").model
    assert rebuilt.rpn.anchor_generator.sizes == model.rpn.anchor_generator.sizes
    assert rebuilt.rpn.anchor_generator.aspect_ratios == model.rpn.anchor_generator.aspect_ratios
