"""Checkpoints written before the tree redesign still load: for evaluation, prediction and resume.

The fixture (tests/fixtures/legacy_v0, written by that commit's own code with its make_fixture.py)
holds a real Lightning checkpoint of the old layout, its predictions on two images, and every model
and data config as a checkpoint of that layout stores them, with the state-dict shapes of the model
each builds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from frcnn.app.checkpoint import model_config_for_loading, module_from_checkpoint
from frcnn.app.legacy import RENAMED_TARGETS, migrate
from frcnn.tools.compose import compose_project_config
from tests.app.helpers import ROOT, compose_config, data_overrides, script

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_v0"
CKPT = FIXTURE / "tiny_faster_rcnn.ckpt"
CONFIGS = json.loads((FIXTURE / "configs.json").read_text())
WRITTEN_AT = "/work/main"  # the checkout the fixture was written in: its configs' absolute paths start there


def _relocated(node):
    """A stored config with the fixture's checkout path replaced by this one's."""
    if isinstance(node, dict):
        return {key: _relocated(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_relocated(value) for value in node]
    return node.replace(WRITTEN_AT, str(ROOT)) if isinstance(node, str) and node.startswith(WRITTEN_AT) else node


def _targets(node) -> set[str]:
    if isinstance(node, dict):
        own = {node["_target_"]} if "_target_" in node else set()
        return own | {t for v in node.values() for t in _targets(v)}
    if isinstance(node, list):
        return {t for v in node for t in _targets(v)}
    return set()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_old_config_builds_the_same_parameters(name):
    from hydra.utils import instantiate

    stored = CONFIGS[name]
    config = model_config_for_loading(stored["model_config"])
    assert not _targets(config) & set(RENAMED_TARGETS)  # nothing of the old layout is left
    assert "init_from" not in config
    torch.manual_seed(0)
    model = instantiate(config, _convert_="all")
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == stored["state_dict_shapes"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_migration_gives_todays_config(name):
    """The old config, migrated, is what today's configs compose for the same command line (the
    only new keys are constructor defaults now written out), and migrating that changes nothing."""
    stored = CONFIGS[name]
    overrides = list(stored["overrides"])
    for old, new in RENAMED_TARGETS.items():  # a command line that named an old class names the new one
        overrides = [o.replace(f"={old}", f"={new}") for o in overrides]
    cfg = compose_project_config([*overrides, "backbone.weights=null", "backbone.weights_path=null",
                                  f"paths.shared_dir={ROOT}/../shared"])  # as the fixture's were
    today = OmegaConf.to_container(cfg.model, resolve=True)
    migrated = migrate(stored["model_config"])
    # written out in today's configs; the constructors' defaults (the same values) before
    migrated["rpn"].setdefault("score_threshold", 0.0)
    if "roi_heads" in migrated and migrated["roi_heads"]["pooler"]["_target_"].endswith(".RoIPooler"):
        migrated["roi_heads"]["pooler"].setdefault("aligned", True)
    assert migrate(today) == today
    # written out since the fixture: the multi-scale keys (an old single size: no draw, the test size
    # is that size), the constructor's defaults before
    for key in ("test_min_size", "size_seed"):
        today["transform"].pop(key)
    assert migrated == today
    data_today = OmegaConf.to_container(cfg.data, resolve=True)
    for key in ("on_bad_image", "bad_image_log", "repeat_factor_threshold", "sampler_seed"):  # the same
        data_today.pop(key)
    assert migrate(_relocated(stored["data_config"])) == data_today


def test_old_checkpoint_predicts_what_it_predicted(tmp_path):
    # one thread, as the fixture's predictions were made (after its 1-thread training run): other
    # thread counts sum in another order, and near-tied scores of this untrained model then swap
    cfg = compose_config("predict", tmp_path / "run", [f"ckpt_path={CKPT}", f"input={FIXTURE / 'images'}",
                                                      f"output_dir={tmp_path / 'pred'}", "draw=false", "torch_threads=1"])
    out = script("predict").predict(cfg)
    results = [{**r, "file_name": Path(r["file_name"]).name} for r in out["results"]]
    expected = json.loads((FIXTURE / "detections.json").read_text())
    assert len(results) == len(expected) == 200
    assert results == expected


def test_old_checkpoint_evaluates(tmp_path, data_dir):
    module = module_from_checkpoint(CKPT)
    assert module.hparams.model_config["_target_"] == "frcnn.modeling.FasterRCNN"
    assert module.class_names == ["circle", "square", "triangle"]
    cfg = compose_config("eval", tmp_path, [f"ckpt_path={CKPT}", "data=shapes", *data_overrides(data_dir), "split=val"])
    metrics, _ = script("eval").evaluate(cfg)
    assert {"val/map", "val/map_50", "val/loss"} <= set(metrics)
    assert torch.isfinite(metrics["val/loss"])


def test_old_checkpoint_resumes_training(tmp_path, data_dir):
    """train.py ckpt_path=<old last.ckpt>: the step count, the optimizer's momentum and the
    schedule continue from the checkpoint's."""
    old = torch.load(CKPT, weights_only=True)
    assert old["global_step"] == 2
    overrides = json.loads((FIXTURE / "overrides.json").read_text())
    overrides = [o.replace("callbacks.detection_images", "callbacks.validation_images") for o in overrides]
    cfg = compose_config("train", tmp_path, [*overrides, f"paths.data_dir={data_dir}", f"ckpt_path={CKPT}",
                                             "trainer.max_epochs=2"])
    _, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == 4  # 2 more steps of epoch 1
    new = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert new["epoch"] == 1 and new["lr_schedulers"][0]["last_epoch"] == 4
    old_momentum = old["optimizer_states"][0]["state"][0]["momentum_buffer"]
    new_momentum = new["optimizer_states"][0]["state"][0]["momentum_buffer"]
    assert old_momentum.shape == new_momentum.shape and not torch.equal(old_momentum, new_momentum)
    assert new["state_dict"].keys() == old["state_dict"].keys()
