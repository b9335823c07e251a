"""Training end to end, in process: fast_dev_run, checkpoints, eval reproducing the logged metric,
predict, the non-finite loss guard, and an offline W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from frcnn.app.callbacks import NonFiniteLossError
from frcnn.app.checkpoint import load_checkpoint
from frcnn.app.module import DetectionModule
from frcnn.app.wandb import wandb_offline
from tests.app.helpers import (
    CLASS_NAMES,
    column,
    compose_config,
    data_overrides,
    read_metrics_csv,
    script,
    tiny_overrides,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """One short epoch (2 steps) with validation, checkpoints and the CSV logger."""
    out = tmp_path_factory.mktemp("train")
    cfg = compose_config("train", out, [*tiny_overrides(data_dir), "logger=csv"])
    metrics, objects = script("train").train(cfg)
    return out, metrics, objects


def test_fast_dev_run(tmp_path, data_dir):
    cfg = compose_config("train", tmp_path, [*tiny_overrides(data_dir), "debug=fdr"])
    metrics, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == 1
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/loss"] > 0
    assert {"val/map", "test/map", "test/loss"} <= set(metrics)


def test_training_logs_every_loss_and_the_lr(trained):
    out, metrics, _ = trained
    rows = read_metrics_csv(out / "csv" / "version_0" / "metrics.csv")
    for key in ("loss_rpn_cls", "loss_rpn_reg", "loss_cls", "loss_box_reg", "loss"):
        assert [step for step, _ in column(rows, f"train/{key}")] == [0, 1]
        assert len(column(rows, f"val/{key}")) == 1
    assert column(rows, "train/lr")[0][1] > 0
    for key in ("val/map", "val/map_50", "val/map_75", *(f"val/ap/{name}" for name in CLASS_NAMES)):
        assert len(column(rows, key)) == 1, key
    # test on the best checkpoint = the only one, on the same images (shapes' test split is val)
    torch.testing.assert_close(float(metrics["test/map"]), column(rows, "val/map")[0][1], rtol=0, atol=1e-9)


def test_checkpoints_are_plain_and_carry_the_labels(trained):
    out, _, _ = trained
    checkpoints = out / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file() and (checkpoints / "epoch_000.ckpt").is_file()
    checkpoint = torch.load(checkpoints / "epoch_000.ckpt", weights_only=True, map_location="cpu")
    hparams = checkpoint["hyper_parameters"]
    assert hparams["class_names"] == CLASS_NAMES
    assert hparams["label_to_category_id"] == {1: 1, 2: 2, 3: 3}
    assert hparams["model_config"]["_target_"] == "frcnn.modeling.FasterRCNN"
    assert checkpoint["global_step"] == 2


def test_unknown_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Path("x")}, path)  # needs unpickling a class
    with pytest.raises(ValueError, match="weights_only=True"):
        load_checkpoint(path)


@pytest.mark.parametrize("rewrite", [False, True])
def test_eval_reproduces_the_logged_metric(trained, tmp_path, rewrite):
    """As trained, and with the inference rewrite (channels-last here: tiny has no BatchNorm)."""
    out, _, _ = trained
    logged = column(read_metrics_csv(out / "csv" / "version_0" / "metrics.csv"), "val/map_50")[0][1]
    ckpt = out / "checkpoints" / "epoch_000.ckpt"
    cfg = compose_config("eval", tmp_path, [f"ckpt_path={ckpt}", "split=val", f"inference_rewrite={rewrite}"])
    metrics, objects = script("eval").evaluate(cfg)
    torch.testing.assert_close(float(metrics["val/map_50"]), logged, rtol=0, atol=1e-9)
    assert objects["module"].class_names == CLASS_NAMES
    assert "Average Precision" in objects["module"].evaluators["val"].summary()
    convs = [m for m in objects["module"].model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs) == rewrite


def test_eval_with_a_data_config(trained, tmp_path, data_dir):
    out, _, _ = trained
    cfg = compose_config("eval", tmp_path, [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}", "data=shapes",
                                            *data_overrides(data_dir)])
    metrics, _ = script("eval").evaluate(cfg)
    # data=shapes with the run's overrides is the run's own validation set (shapes' test split is
    # val) at the same batch size: the number logged at the end of training, exactly
    logged = column(read_metrics_csv(out / "csv" / "version_0" / "metrics.csv"), "val/map")[-1][1]
    torch.testing.assert_close(float(metrics["test/map"]), logged, rtol=0, atol=1e-9)
    written = column(read_metrics_csv(tmp_path / "csv" / "version_0" / "metrics.csv"), "test/map")  # eval logs too
    torch.testing.assert_close(written[-1][1], logged, rtol=0, atol=1e-6)


def test_predict_writes_coco_results_inside_the_images(trained, tmp_path, data_dir):
    out, _, _ = trained
    images = sorted((data_dir / "shapes" / "JPEGImages").glob("val_*"))[:3]
    folder = tmp_path / "input"
    folder.mkdir()
    for image in images:
        (folder / image.name).write_bytes(image.read_bytes())
    cfg = compose_config("predict", tmp_path / "run", [f"ckpt_path={out / 'checkpoints' / 'last.ckpt'}",
                                                      f"input={folder}", f"output_dir={tmp_path / 'pred'}"])
    script("predict").predict(cfg)

    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    sizes = {i: Image.open(p).size for i, p in enumerate(sorted(folder.iterdir()))}  # (W, H)
    assert results, "an untrained detector still scores boxes above the 0.05 threshold"
    for r in results:
        x, y, w, h = r["bbox"]
        width, height = sizes[r["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= width + 0.01 and y + h <= height + 0.01, r
        assert CLASS_NAMES[r["category_id"] - 1] == r["category_name"]  # shapes' category ids are 1..3
        assert 0.05 <= r["score"] <= 1
    pngs = sorted((tmp_path / "pred" / "images").glob("*.png"))
    assert len(pngs) == 3
    assert [Image.open(p).size for p in pngs] == [sizes[i] for i in range(3)]


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    train_step = DetectionModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = train_step(self, batch, batch_idx)
        if self.global_step == 3:  # epoch 1, second batch
            self.last_losses["loss_cls"] = torch.tensor(float("nan"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(DetectionModule, "training_step", poisoned)
    cfg = compose_config("train", tmp_path, [*tiny_overrides(data_dir), "trainer.max_epochs=3",
                                             "trainer.limit_val_batches=1"])
    with pytest.raises(NonFiniteLossError, match=r"global step 3 \(epoch 1\): .*loss_cls=nan") as error:
        script("train").train(cfg)
    assert "last.ckpt" in str(error.value)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # written at the failure (LastCheckpoint.on_exception): the 3 good steps, not the poisoned one's update
    assert checkpoint["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_wandb_offline_without_credentials(tmp_path, data_dir, monkeypatch):
    """No WANDB_MODE, no API key, no netrc: the run goes offline by itself and keeps what it logged."""
    for key in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_config("train", tmp_path, [*tiny_overrides(data_dir), "logger=wandb", "test=false"])
    script("train").train(cfg)

    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")
    data = records.read_bytes()
    for key in (b"train/loss_rpn_cls", b"train/loss_rpn_reg", b"train/loss_cls", b"train/loss_box_reg",
                b"train/loss", b"train/lr", b"val/loss", b"val/map", b"val/map_50", b"val/ap/circle"):
        assert key in data, key
    media = run_dir / "files" / "media"
    images = list((media / "images" / "val" / "images").glob("*.png"))  # not the val/plots/* figures
    assert len(images) == 2  # callbacks.validation_images.num_images
    assert b"ground_truth" in data and b"predictions" in data
    boxes = [json.loads(p.read_text()) for p in (media / "metadata" / "boxes2D").rglob("*.json")]
    assert len(boxes) == 4  # ground truth and predictions of each image
    captions = {box["box_caption"].split()[0] for b in boxes for box in b["box_data"]}
    assert captions and captions <= set(CLASS_NAMES)
    (table,) = (media / "table").rglob("ap_table*.json")
    table = json.loads(table.read_text())
    assert table["columns"] == ["class", "AP", "AP50"] and [row[0] for row in table["data"]] == CLASS_NAMES


@pytest.mark.parametrize(
    ("env", "netrc", "expected"),
    [
        ({}, False, True),
        ({"WANDB_API_KEY": "k"}, False, False),
        ({}, True, False),
        ({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, False, True),
        ({"WANDB_MODE": "online"}, False, True),  # online without credentials would prompt: offline
        ({"WANDB_MODE": "online", "WANDB_API_KEY": "k"}, False, False),
        ({"WANDB_MODE": "disabled"}, False, False),
    ],
)
def test_wandb_offline_resolution(tmp_path, monkeypatch, env, netrc, expected):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "netrc"
    if netrc:
        path.write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    monkeypatch.setenv("NETRC", str(path))
    assert wandb_offline(None) is expected
