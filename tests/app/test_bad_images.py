"""Bad images at training, evaluation and prediction time: ``on_bad_image=error`` (the default) stops
naming the file; ``skip`` goes on with the rest, says how many were dropped, and lists each one with
its reason in the run folder (``bad_images.tsv``)."""

from __future__ import annotations

import logging
import shutil

import hydra
import pytest

from frcnn.data import DataError
from frcnn.data.bad_images import read_bad_image_log
from tests.api.checkpoint import tiny_checkpoint
from tests.app.helpers import SHAPES, compose_config, script, tiny_overrides


@pytest.fixture
def bad_data(tmp_path, data_dir):
    """The tiny shapes dataset with train image 3 and val image 2 cut in half (an interrupted copy)."""
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    images = root / "shapes" / "JPEGImages"
    for name in ("train_00003.jpg", "val_00002.jpg"):
        (images / name).write_bytes((images / name).read_bytes()[:300])
    return root, images / "train_00003.jpg", images / "val_00002.jpg"


def test_training_skips_bad_images_and_lists_them(tmp_path, bad_data, caplog):
    data, train_bad, _ = bad_data
    with caplog.at_level(logging.WARNING):
        _, objects = script("train").train(compose_config("train", tmp_path / "run", [
            *tiny_overrides(data), "data.on_bad_image=skip", "test=false"]))
    assert objects["trainer"].global_step == 2
    assert len(objects["datamodule"].datasets["train"]) == SHAPES["num_train"] - 1
    assert f"train split of {objects['datamodule'].sources['train']}: 1 of {SHAPES['num_train']} images skipped" \
           in caplog.text
    listed = read_bad_image_log(tmp_path / "run" / "bad_images.tsv")
    assert [(split, file) for split, file, _ in listed] == [("train", str(train_bad)), ("val", str(bad_data[2]))]
    assert all("truncated or corrupt" in reason for _, _, reason in listed)


def test_the_default_stops_naming_the_file_and_the_option(tmp_path, bad_data):
    data, train_bad, _ = bad_data
    with pytest.raises(DataError) as raised:
        script("train").train(compose_config("train", tmp_path / "run", [*tiny_overrides(data), "test=false"]))
    assert str(train_bad) in str(raised.value) and "data.on_bad_image=skip" in str(raised.value)


def test_an_image_that_fails_during_an_epoch_is_replaced_and_listed(tmp_path, bad_data):
    """check_images=off: nothing is opened at setup, so the decode fails in the loader."""
    data, train_bad, _ = bad_data
    cfg = compose_config("train", tmp_path, [*tiny_overrides(data), "data.check_images=off", "data.on_bad_image=skip"])
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    dataset = datamodule.datasets["train"]
    index = next(i for i, r in enumerate(dataset.records) if r.path == train_bad)
    (sample,) = dataset.__getitems__([index])  # the next record instead
    assert sample.image_id == dataset.records[index + 1].image_id
    ((split, file, reason),) = read_bad_image_log(tmp_path / "bad_images.tsv")
    assert (split, file) == ("train", str(train_bad)) and "cannot decode image" in reason
    strict = hydra.utils.instantiate(cfg.data, on_bad_image="error", _convert_="all")
    strict.setup("fit")
    with pytest.raises(DataError, match=f"{train_bad}: cannot decode image"):
        strict.datasets["train"].__getitems__([index])


def test_eval_skips_bad_images(tmp_path, bad_data):
    data, _, val_bad = bad_data
    ckpt = tiny_checkpoint(tmp_path / "ckpt")  # on its own, good data
    args = [f"ckpt_path={ckpt}", "data=shapes", f"paths.data_dir={data}", "split=val", "data.num_workers=0",
            *(f"data.train.generator.{key}={value}" for key, value in SHAPES.items())]
    with pytest.raises(DataError, match=str(val_bad)):
        script("eval").evaluate(compose_config("eval", tmp_path / "strict", args))
    _, objects = script("eval").evaluate(compose_config("eval", tmp_path / "eval", [*args, "on_bad_image=skip"]))
    assert len(objects["module"].evaluators["val"].store.gathered()) == SHAPES["num_val"] - 1
    assert [file for _, file, _ in read_bad_image_log(tmp_path / "eval" / "bad_images.tsv")] == [str(val_bad)]


def test_predict_skips_bad_images(tmp_path, bad_data):
    _, _, val_bad = bad_data
    ckpt = tiny_checkpoint(tmp_path / "ckpt")  # on its own, good data
    folder = tmp_path / "input"
    folder.mkdir()
    for name in ("val_00001.jpg", "val_00002.jpg", "val_00003.jpg"):
        shutil.copy(val_bad.parent / name, folder / name)
    args = [f"ckpt_path={ckpt}", f"input={folder}", "draw=false"]
    with pytest.raises(DataError, match=f"{folder / 'val_00002.jpg'}: cannot decode image.*on_bad_image=skip"):
        script("predict").predict(compose_config("predict", tmp_path / "strict", args))
    out = script("predict").predict(compose_config("predict", tmp_path / "pred", [*args, "on_bad_image=skip"]))
    assert [image["file_name"] for image in out["images"]] == [str(folder / "val_00001.jpg"),
                                                             str(folder / "val_00003.jpg")]
    assert {result["file_name"] for result in out["results"]} <= {image["file_name"] for image in out["images"]}
    ((split, file, _),) = read_bad_image_log(tmp_path / "pred" / "bad_images.tsv")
    assert (split, file) == ("predict", str(folder / "val_00002.jpg"))
