"""Every config group composes, and its nodes instantiate into the objects they describe."""

from __future__ import annotations

import hydra
import pytest
import torch
from hydra.errors import InstantiationException
from lightning import Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR

from frcnn.app import utils
from frcnn.app.wandb_run import WandbRunLogger
from frcnn.data import DataError
from tests.app.helpers import CONF_DIR, ROOT, compose_config


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
    names = {type(c).__name__ for c in utils.instantiate_callbacks(cfg.callbacks)}
    assert names == {"ModelCheckpoint", "RichModelSummary", "RichProgressBar", "NonFiniteLossGuard",
                     "DetectionImageLogger", "PerClassAPTable", "ValidationPlots"}
    for name in set(options("callbacks")) - {"default", "none"}:
        node = OmegaConf.load(CONF_DIR / "callbacks" / f"{name}.yaml")
        single = OmegaConf.merge({"paths": cfg.paths}, {"callbacks": node})  # resolves ${paths.*}
        (callback,) = utils.instantiate_callbacks(single.callbacks)
        assert type(callback).__name__ == node[name]._target_.rsplit(".", 1)[1]
    assert utils.instantiate_callbacks(compose_config("train", tmp_path, ["callbacks=none"]).callbacks) == []


@pytest.mark.parametrize("name", options("logger"))
def test_logger(tmp_path, name):
    cfg = compose_config("train", tmp_path, [f"logger={name}"])
    loggers = utils.instantiate_loggers(cfg.logger)
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


@pytest.mark.parametrize("name", options("data"))
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
    model = utils.build_model(cfg.model)
    assert model.num_classes == cfg.data.num_classes
    assert model.transform.min_size == (cfg.model.transform.min_size,)


def test_backbone_configs(tmp_path):
    """Each backbone option names a callable of frcnn.backbones whose arguments it matches; tiny is
    built through the model's ${backbone} (the others are built by tests/model, with weights)."""
    import inspect

    from hydra.utils import get_method

    for name in options("backbone"):
        node = OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")
        build = get_method(node._target_)
        assert node._target_.startswith("frcnn.backbones.")
        assert set(node) - {"_target_"} <= set(inspect.signature(build).parameters), name
    cfg = compose_config("train", tmp_path, ["backbone=tiny"])
    assert cfg.model.backbone.name == "tiny"  # the model interpolates ${backbone}
    backbone = hydra.utils.instantiate(cfg.backbone)
    assert backbone.stride == 16


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment(tmp_path, name):
    # Pretrained ImageNet weights would be downloaded: off here (raccoon's local file stays on).
    weights = [] if name == "raccoon_mobilenet" else ["backbone.weights=null"]
    cfg = compose_config("train", tmp_path, [f"experiment={name}", *weights])
    assert cfg.optimizer.lr > 0 and cfg.data.num_classes == cfg.model.num_classes
    if name in ("shapes_fast", "raccoon_mobilenet"):  # VGG / ResNet heads are big to build for nothing
        model = utils.build_model(cfg.model)
        assert model.backbone.name == cfg.backbone.name


@pytest.mark.parametrize("name", options("debug"))
def test_debug(tmp_path, name):
    cfg = compose_config("train", tmp_path, [f"debug={name}"])
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.max_epochs >= 1 and cfg.data.num_workers == 0
    if name == "fdr":
        assert trainer.fast_dev_run


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
    assert cfg.paths.shared_dir == f"{root}/../shared" and cfg.paths.data_dir == f"{root}/data"
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
