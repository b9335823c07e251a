"""Every config group composes, and its nodes instantiate into the objects they describe."""

from __future__ import annotations

import os

import hydra
import pytest
import torch
from hydra.errors import InstantiationException
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from frcnn.app.build import ConfigError, build_model
from frcnn.app.instantiate import instantiate_callbacks, instantiate_loggers
from frcnn.app.wandb_run import WandbRunLogger
from frcnn.data import DataError
from tests.app.helpers import CONF_DIR, ROOT, compose_config, script


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def test_every_group_has_the_documented_options():
    assert {"sgd", "adamw"} <= set(options("optimizer"))
    assert {"step", "cosine", "constant"} <= set(options("schedule"))
    assert {"default", "cpu", "gpu", "ddp", "ddp_sim"} <= set(options("trainer"))
    assert {"wandb", "csv", "tensorboard", "many"} <= set(options("logger"))
    assert {"shapes_fast", "voc07_vgg16", "coco_resnet50", "raccoon_mobilenet"} <= set(options("experiment"))
    assert {"fdr", "overfit", "limit", "profiler"} <= set(options("debug"))
    assert {"optuna"} <= set(options("hparams_search"))


def test_default_train_config_is_the_fast_shapes_run(tmp_path):
    cfg = compose_config("train", tmp_path, [])
    assert cfg.backbone.name == "tiny"
    assert cfg.data.train._target_ == "frcnn.data.ShapesSource"
    assert cfg.model.num_classes == 3
    assert cfg.model.transform.min_size == cfg.model.transform.max_size == 256
    assert cfg.schedule._target_ == "frcnn.app.optim.cosine_schedule"
    assert cfg.optimized_metric == "val/map_50"
    assert cfg.paths.output_dir == str(tmp_path)
    assert cfg.hydra.run.dir == str(tmp_path)


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer(tmp_path, name):
    cfg = compose_config("train", tmp_path, [f"optimizer={name}"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4))
    optimizer = utils_build(cfg, model)
    assert type(optimizer).__name__ == cfg.optimizer._target_.rsplit(".", 1)[1]
    decays = sorted(group["weight_decay"] for group in optimizer.param_groups)
    assert decays == [0.0, cfg.optimizer.weight_decay]  # norm and bias: none; conv weight: configured
    assert all(group["lr"] == cfg.optimizer.lr for group in optimizer.param_groups)


def utils_build(cfg, model):
    from frcnn.app.optim import build_optimizer

    return build_optimizer(hydra.utils.instantiate(cfg.optimizer), model, cfg.module.norm_bias_weight_decay)


@pytest.mark.parametrize("name", options("schedule"))
def test_schedule(tmp_path, name):
    cfg = compose_config("train", tmp_path, [f"schedule={name}", "schedule.warmup_steps=10"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = hydra.utils.instantiate(cfg.schedule)(optimizer, total_steps=100)
    assert isinstance(scheduler, LambdaLR)
    torch.testing.assert_close(optimizer.param_groups[0]["lr"], 0.1 * cfg.schedule.warmup_start_factor)


def test_callbacks(tmp_path):
    """The default set (composed), and every single-callback file on its own."""
    cfg = compose_config("train", tmp_path, [])
    names = {type(c).__name__ for c in instantiate_callbacks(cfg.callbacks)}
    assert names == {"ModelCheckpoint", "LastCheckpoint", "Preemption", "ResumeState", "RichModelSummary",
                     "RichProgressBar", "NonFiniteLossGuard", "ValidationImages", "PerClassAPTable", "ValidationPlots",
                     "TrainingSpeed"}
    for name in set(options("callbacks")) - {"default", "none"}:
        node = OmegaConf.load(CONF_DIR / "callbacks" / f"{name}.yaml")
        single = OmegaConf.merge({"paths": cfg.paths}, {"callbacks": node})  # resolves ${paths.*}
        (callback,) = instantiate_callbacks(single.callbacks)
        assert type(callback).__name__ == node[name]._target_.rsplit(".", 1)[1]
    assert instantiate_callbacks(compose_config("train", tmp_path, ["callbacks=none"]).callbacks) == []


@pytest.mark.parametrize("name", options("logger"))
def test_logger(tmp_path, name):
    cfg = compose_config("train", tmp_path, [f"logger={name}"])
    loggers = instantiate_loggers(cfg.logger)
    expected = {"csv": {CSVLogger}, "tensorboard": {TensorBoardLogger}, "wandb": {WandbRunLogger},
                "many": {CSVLogger, TensorBoardLogger, WandbRunLogger}}[name]
    assert {type(logger) for logger in loggers} == expected
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            assert logger._offline  # WANDB_MODE=offline in the tests


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer(tmp_path, name):
    # gpu / ddp are built on the CPU here (no GPU in CI); their other settings are kept.
    cpu = ["trainer.accelerator=cpu"] if name in ("gpu", "ddp") else []
    cfg = compose_config("train", tmp_path, [f"trainer={name}", *cpu])
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer, Trainer)
    if name in ("ddp", "ddp_sim"):
        assert type(trainer.strategy).__name__ == "DDPStrategy"
        assert trainer.num_devices == cfg.trainer.devices
    if name == "ddp_sim":
        assert trainer.strategy._process_group_backend == "gloo"


def user_files(name: str, folder) -> list[str]:
    """data=csv / data=yolo read the user's files: a one-image dataset of each, and its overrides."""
    from PIL import Image

    if name == "csv":
        Image.new("RGB", (32, 24)).save(folder / "a.png")
        for split in ("train", "val"):
            (folder / f"{split}.csv").write_text("a.png,1,2,20,22,cat\n")
        return [f"data.train.csv={folder / 'train.csv'}", f"data.val.csv={folder / 'val.csv'}"]
    if name == "yolo":
        for split in ("train", "val"):
            (folder / "images" / split).mkdir(parents=True)
            (folder / "labels" / split).mkdir(parents=True)
            Image.new("RGB", (32, 24)).save(folder / "images" / split / "a.png")
            (folder / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.25 0.5\n")
        return [f"data.dataset_yaml={folder}"]
    return []


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.shared_data) if n == "coco128" else n
                                  for n in options("data")])
def test_data(tmp_path, name, data_dir):
    overrides = user_files(name, tmp_path)
    cfg = compose_config("train", tmp_path, [f"data={name}", f"paths.data_dir={data_dir}", *overrides])
    if name in ("coco", "voc"):  # full datasets: not on this machine; COCO reads its JSON at construction
        try:
            datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
        except InstantiationException as error:
            assert isinstance(error.__cause__, DataError) and "not found" in str(error)
            return
    else:
        datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    assert cfg.data.num_classes in (None, datamodule.num_classes)  # None: classes: auto
    assert datamodule.num_classes == len(datamodule.class_names)
    assert sorted(datamodule.label_to_category_id) == list(range(1, datamodule.num_classes + 1))


@pytest.mark.parametrize(
    "overrides",
    # The default experiment shrinks Faster R-CNN's R-CNN head: the standalone RPN goes without it.
    [["model=faster_rcnn"], ["model=rpn_only", "data=raccoon", "~experiment", "backbone=tiny"]],
    ids=["faster_rcnn", "rpn_only"],
)
def test_model(tmp_path, overrides):
    cfg = compose_config("train", tmp_path, overrides)
    model = build_model(cfg.model)
    assert model.num_classes == cfg.data.num_classes
    assert model.transform.min_size == (cfg.model.transform.min_size,)


def test_backbone_configs(tmp_path):
    """Each backbone option names a callable of frcnn.modeling.backbone whose arguments it matches; tiny is
    built through the model's ${backbone} (the others are built by tests/model, with weights)."""
    import inspect

    from hydra.utils import get_method

    for name in options("backbone"):
        node = OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")
        build = get_method(node._target_)
        assert node._target_.startswith("frcnn.modeling.backbone.")
        assert set(node) - {"_target_"} <= set(inspect.signature(build).parameters), name
    cfg = compose_config("train", tmp_path, ["backbone=tiny"])
    assert cfg.model.backbone.name == "tiny"  # the model interpolates ${backbone}
    backbone = hydra.utils.instantiate(cfg.backbone)
    assert backbone.stride == 16


# What each experiment is for, value by value (its comment block states the same).
EXPERIMENTS = {
    "shapes_fast": {"data.num_classes": 3, "backbone.name": "tiny", "optimizer._target_": "torch.optim.AdamW",
                    "optimizer.lr": 1.5e-3, "trainer.max_epochs": 12, "model.transform.min_size": 256,
                    "model.transform.max_size": 256, "model.rpn.anchor_generator.sizes": [16, 32, 64, 128]},
    "raccoon_mobilenet": {"data.num_classes": 1, "backbone.name": "mobilenet_v2", "backbone.weights": None,
                          "optimizer._target_": "frcnn.app.fused_sgd.SGD", "optimizer.lr": 0.01,
                          "schedule._target_": "frcnn.app.optim.cosine_schedule", "model.transform.min_size": 480,
                          "model.roi_heads.pooler.method": "roi_align", "trainer.max_epochs": 30},
    "coco_resnet50": {"data.num_classes": 80, "data.train._target_": "frcnn.data.CocoSource",
                      "backbone.name": "resnet50", "optimizer.lr": 0.01, "optimizer.weight_decay": 1e-4,
                      "schedule.milestones": [120000, 160000], "schedule.warmup_steps": 1000,
                      "trainer.max_steps": 180000, "trainer.accelerator": "gpu", "model.transform.min_size": 800,
                      "model.transform.max_size": 1333, "model.rpn.anchor_generator.sizes": [32, 64, 128, 256, 512],
                      "model.roi_heads.pooler.method": "roi_align", "model.roi_heads.batch_size_per_image": 512},
    "voc07_vgg16": {"data.num_classes": 20, "data.train._target_": "frcnn.data.VocSource", "data.train.split": "trainval",
                    "data.val.split": "test", "backbone.name": "vgg16", "optimizer._target_": "frcnn.app.fused_sgd.SGD",
                    "optimizer.lr": 1e-3, "optimizer.momentum": 0.9, "optimizer.weight_decay": 5e-4,
                    "schedule.milestones": [50000], "schedule.gamma": 0.1, "trainer.max_steps": 70000,
                    "data.batch_size": 1, "model.transform.min_size": 600, "model.transform.max_size": 1000,
                    "model.roi_heads.pooler.method": "crop_and_resize", "model.roi_heads.box_head.hidden_dim": 4096},
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.shared_data) if n == "raccoon_mobilenet" else n
                                  for n in options("experiment")])
def test_experiment(tmp_path, name):
    # Pretrained ImageNet weights would be downloaded: off here (raccoon's local file stays on).
    weights = [] if name == "raccoon_mobilenet" else ["backbone.weights=null"]
    cfg = compose_config("train", tmp_path, [f"experiment={name}", *weights])
    for key, expected in EXPERIMENTS[name].items():
        value = OmegaConf.select(cfg, key)
        value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
        assert value == expected, (name, key, value)
    assert cfg.model.num_classes == cfg.data.num_classes
    if name in ("shapes_fast", "raccoon_mobilenet"):  # VGG / ResNet heads are big to build for nothing
        model = build_model(cfg.model)
        assert model.backbone.name == cfg.backbone.name
        assert model.transform.min_size == (cfg.model.transform.min_size,)


@pytest.mark.parametrize(
    "name, trainer",
    [
        ("fdr", {"fast_dev_run": 1, "max_epochs": 1}),
        ("limit", {"max_epochs": 3, "limit_train_batches": 4, "limit_val_batches": 2, "limit_test_batches": 2}),
        ("overfit", {"max_epochs": 30, "overfit_batches": 2}),
        ("profiler", {"max_epochs": 1, "limit_train_batches": 20, "limit_val_batches": 5}),
    ],
)
def test_debug(tmp_path, name, trainer):
    cfg = compose_config("train", tmp_path, [f"debug={name}"])
    built = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    for key, value in trainer.items():
        assert getattr(built, key) == value, key
    # every debug config: one CPU process, loaders in the main process, DEBUG logs
    assert type(built.accelerator).__name__ == "CPUAccelerator" and built.num_devices == 1
    assert cfg.data.num_workers == 0 and not cfg.data.persistent_workers
    assert cfg.hydra.job_logging.root.level == "DEBUG"
    assert (type(built.profiler).__name__ == "SimpleProfiler") == (name == "profiler")
    assert cfg.trainer.detect_anomaly == (name in ("fdr", "limit"))
    if name == "overfit":
        assert cfg.callbacks.get("model_checkpoint") is None


@pytest.mark.parametrize(
    "overrides, groups, reason",
    [
        (["model=faster_rcnn_fpn", "backbone=resnet50", "backbone.weights=null"],
         "model=faster_rcnn_fpn, backbone=resnet50, data=shapes", "anchors give sizes for 5 feature level(s)"),
        (["model=faster_rcnn_fpn_mobilenet", "backbone=resnet50_fpn", "backbone.weights=null"],
         "model=faster_rcnn_fpn_mobilenet, backbone=resnet50_fpn", "sizes for 3 feature level(s), the backbone resnet50_fpn gives 5"),
        (["backbone=resnet50_fpn", "backbone.weights=null"],
         "model=faster_rcnn, backbone=resnet50_fpn", "need a MultiLevelRoIPooler"),
        (["model=rpn_only"], "model=rpn_only, backbone=tiny, data=shapes", "single class"),
        (["model.roi_heads.box_head._target_=frcnn.modeling.roi_heads.ResNetC5Head", "~model.roi_heads.box_head.hidden_dim"],
         "model=faster_rcnn, backbone=tiny", "needs a backbone with a conv5 stage"),
    ],
    ids=["fpn_model_single_map_backbone", "mobilenet_fpn_model_resnet_fpn", "pyramid_without_level_pooler",
         "rpn_only_three_classes", "c4_head_without_conv5"],
)
def test_parts_that_do_not_fit_fail_before_training_naming_the_groups(tmp_path, data_dir, overrides, groups, reason):
    """train.py on a combination that cannot work: one ConfigError before the first step, naming the
    chosen model / backbone / data options and the fix, instead of a failure at the first forward."""
    cfg = compose_config("train", tmp_path, ["~experiment", *overrides, f"paths.data_dir={data_dir}"])
    with pytest.raises(ConfigError) as error:
        script("train").train(cfg)
    message = str(error.value)
    assert groups in message and reason in message
    assert "Change one of these config groups" in message and "model=faster_rcnn_fpn with backbone=resnet50_fpn" in message
    assert not (tmp_path / "checkpoints").exists()


def test_init_from_is_a_run_option_not_a_constructor_argument(tmp_path):
    for model in ("faster_rcnn", "faster_rcnn_fpn", "faster_rcnn_fpn_mobilenet", "rpn_only"):
        cfg = compose_config("train", tmp_path, ["~experiment", f"model={model}"])
        assert "init_from" not in cfg.model and cfg.init_from is None
        for node in (cfg.model.transform, cfg.model.rpn):
            assert node._partial_ is True  # factories the detector calls with its backbone


def test_models_compose_instead_of_copying(tmp_path):
    """model/components hold the transform and the RPN once; the FPN models change only what differs."""
    seed = compose_config("train", tmp_path, ["~experiment"]).model
    rpn_only = compose_config("train", tmp_path, ["~experiment", "model=rpn_only"]).model
    fpn = compose_config("train", tmp_path, ["~experiment", "model=faster_rcnn_fpn"]).model
    assert OmegaConf.to_container(rpn_only.transform) == OmegaConf.to_container(seed.transform)
    assert rpn_only.rpn.anchor_generator == seed.rpn.anchor_generator and rpn_only.rpn.nms_threshold == 0.5
    assert fpn.roi_heads.box_coder == seed.roi_heads.box_coder  # inherited from faster_rcnn.yaml
    assert fpn.roi_heads.pooler._target_.endswith("MultiLevelRoIPooler") and fpn.roi_heads.pooler.output_size == 7


@pytest.mark.parametrize("name", options("data"))
def test_data_configs_share_one_base(tmp_path, name):
    """conf/data/base/loader.yaml is every dataset's loader and augmentation block."""
    cfg = compose_config("train", tmp_path, ["~experiment", f"data={name}"])
    base = OmegaConf.load(CONF_DIR / "data" / "base" / "loader.yaml")
    for key in ("batch_size", "num_workers", "aspect_ratio_grouping", "check_images"):
        assert cfg.data[key] == base[key], key
    assert cfg.data._target_ == "frcnn.data.DetectionDataModule" and cfg.data.train_aug.hflip == 0.5
    changed = compose_config("train", tmp_path, ["~experiment", f"data={name}", "data.train_aug.hflip=0.2"])
    assert changed.data.train_aug.hflip == 0.2


def test_hparams_search(tmp_path):
    cfg = compose_config("train", tmp_path, ["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert "optimizer.lr" in sweeper.params
    assert {f"model.loss_weights.{k}" for k in ("loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg")} <= set(sweeper.params)
    assert cfg.optimized_metric == "val/map_50"


def test_slurm_launcher(tmp_path):
    cfg = compose_config("train", tmp_path, ["hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == cfg.trainer.devices


def test_run_dirs_are_under_outputs():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("train", return_hydra_config=True)
    root = ROOT.resolve()
    assert cfg.paths.root_dir == str(root) and cfg.paths.log_dir == f"{root}/outputs"
    assert cfg.paths.data_dir == f"{root}/data"
    # ../shared unless FRCNN_SHARED_DIR names another place (tests/conftest.py sets it to the one found)
    assert cfg.paths.shared_dir == os.environ.get("FRCNN_SHARED_DIR", f"{root}/../shared")
    paths = OmegaConf.to_container(cfg.paths, resolve=False)
    assert paths["shared_dir"] == "${oc.env:FRCNN_SHARED_DIR,${paths.root_dir}/../shared}"
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert run_dir.startswith("${paths.log_dir}/${task_name}/runs/")
    assert sweep["dir"].startswith("${paths.log_dir}/${task_name}/multiruns/") and sweep["subdir"] == "${hydra.job.num}"


@pytest.mark.parametrize("name", ["eval", "predict"])
def test_eval_and_predict_configs(tmp_path, name):
    extra = ["input=x.png"] if name == "predict" else []
    cfg = compose_config(name, tmp_path, ["ckpt_path=x.ckpt", *extra])
    assert cfg.task_name == name and cfg.ckpt_path == "x.ckpt"
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer, Trainer)
