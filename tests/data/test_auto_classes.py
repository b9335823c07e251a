"""``classes: auto`` end to end: the real configs, printed by the data check, stored in the checkpoint."""

import torch
from datafiles import write_csv
from tests.app.helpers import compose_config, script

from frcnn.data.check import main as check_main

IMAGES = {f"img/{i}.jpg": (96 + 8 * i, 96) for i in range(4)}
TRAIN = [("img/0.jpg", 10, 10, 50, 60, "zebra"), ("img/1.jpg", 20, 5, 90, 70, "ant"), ("img/2.jpg", 5, 5, 40, 40, "zebra")]
VAL = [("img/3.jpg", 30, 20, 80, 90, "mole")]


def csv_overrides(tmp_path) -> list[str]:
    train = write_csv(tmp_path / "train.csv", TRAIN, images=IMAGES)
    val = write_csv(tmp_path / "val.csv", VAL)
    return ["data=csv", f"data.train.csv={train}", f"data.val.csv={val}", "data.num_workers=0"]


def test_the_data_check_prints_the_classes_it_found(tmp_path, capsys):
    assert check_main(csv_overrides(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "classes (3): ant, mole, zebra\n  (classes: auto, found in the annotations and sorted" in out
    assert "images: 3   without training boxes: 0" in out and "RESULT: OK" in out


def test_the_checkpoint_stores_the_found_classes(tmp_path):
    cfg = compose_config("train", tmp_path / "run", [
        *csv_overrides(tmp_path), "data.batch_size=2", "model.transform.min_size=128", "model.transform.max_size=128",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=1", "trainer.limit_train_batches=1",
        "trainer.check_val_every_n_epoch=1", "callbacks.validation_images.num_images=1", "test=false",
        "print_config=false", "torch_threads=1",
    ])
    assert cfg.data.num_classes is None  # classes: auto: K comes from the data
    _, objects = script("train").train(cfg)
    assert objects["module"].model.num_classes == 3
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["ant", "mole", "zebra"]
    assert checkpoint["hyper_parameters"]["model_config"]["num_classes"] == 3
    assert checkpoint["DetectionDataModule"]["class_names"] == ["ant", "mole", "zebra"]
