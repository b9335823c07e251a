"""The DataModule as Hydra builds it from conf/data/*.yaml, its loaders, and the data check CLI."""

import math

import numpy as np
import pytest
import torch
from datafiles import PROJECT, SHARED, write_image
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from frcnn.data import (
    Augmentation,
    DataError,
    DetectionDataModule,
    DetectionDataset,
    GroupedBatchSampler,
    ImageRecord,
    VocSource,
    collate_detection,
)
from frcnn.data.check import main as check_main
from frcnn.tools.compose import compose_project_config


def data_config(name, data_dir, **overrides):
    """conf/data/<name>.yaml as train.py composes it (its shared base included), with our own paths."""
    cfg = compose_project_config(
        ["~experiment", f"data={name}", f"paths.data_dir={data_dir}", f"paths.shared_dir={SHARED}",
         f"paths.output_dir={data_dir / 'out'}"]
    )
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return cfg


@pytest.mark.parametrize("name, num_classes, first, label_to_id", [
    ("shapes", 3, "circle", {1: 1, 2: 2, 3: 3}),
    ("raccoon", 1, "raccoon", {1: 1}),
    pytest.param("coco128", 80, "person", {1: 1, 80: 90}, marks=pytest.mark.shared_data),
    ("voc", 20, "aeroplane", {1: 1, 20: 20}),
])
def test_every_data_config_builds_with_class_names_before_setup(tmp_path, name, num_classes, first, label_to_id):
    cfg = data_config(name, tmp_path)
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, DetectionDataModule)
    assert datamodule.num_classes == num_classes == cfg.data.num_classes
    assert datamodule.class_names[0] == first
    assert {k: datamodule.label_to_category_id[k] for k in label_to_id} == label_to_id
    assert datamodule.datasets == {} and not (tmp_path / "shapes").exists()  # nothing read or generated yet
    assert datamodule.check_images == "header" and datamodule.batch_size == 2


def build_error(cfg) -> str:
    """The DataError behind Hydra's InstantiationException."""
    with pytest.raises(InstantiationException) as caught:
        instantiate(cfg.data)
    assert isinstance(caught.value.__cause__, DataError)
    return str(caught.value.__cause__)


def test_coco_config_without_files_names_the_missing_file(tmp_path):
    assert build_error(data_config("coco", tmp_path)) == (
        f"{tmp_path}/coco/annotations/instances_train2017.json: annotation file not found")


def test_num_classes_must_match_the_data(tmp_path):
    assert build_error(data_config("raccoon", tmp_path, num_classes=2)).startswith(
        f"the data config says num_classes=2 but VocSource(root='{SHARED}/data/raccoon', split='train') has 1 "
        "classes: ['raccoon']")
    assert build_error(data_config("raccoon", tmp_path, **{"val.classes": ["dog"]})).startswith(
        "the val split's classes ['dog'] differ from the train split's ['raccoon']")


def test_loaders_deliver_grouped_batches_of_the_contract(tmp_path):
    cfg = data_config("shapes", tmp_path, **{"train.generator.num_train": 9, "train.generator.num_val": 4,
                                             "num_workers": 0, "batch_size": 2})
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    train = datamodule.train_dataloader()
    assert isinstance(train.batch_sampler, GroupedBatchSampler) and len(train) == math.ceil(9 / 2)
    seen = []
    for images, targets in train:
        assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) <= 2
        for image, target in zip(images, targets):
            assert image.dtype == torch.float32 and image.shape[0] == 3
            assert set(target) == {"boxes", "labels", "image_id", "ignore_boxes", "ignore_labels"}
            seen.append(int(target["image_id"]))
    assert sorted(seen) == list(range(1, 10))  # COCO ids of the 9 training images, each once
    val_ids = [int(t["image_id"]) for _, targets in datamodule.val_dataloader() for t in targets]
    assert val_ids == [10, 11, 12, 13]  # evaluation keeps the file order
    assert datamodule.test_dataloader().dataset is datamodule.datasets["val"]  # test defaults to val, read once


def test_loader_workers_each_draw_their_own_flips(tmp_path):
    write_image(tmp_path / "a.jpg", 32, 24)
    record = ImageRecord(tmp_path / "a.jpg", 0, 32, 24, boxes=np.array([[0, 0, 8, 8]], np.float32), labels=np.ones(1))
    dataset = DetectionDataset([record] * 32, Augmentation(hflip=0.5))

    def flips_per_worker():
        loader = DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate_detection)
        flipped = [float(targets[0]["boxes"][0, 0]) == 24.0 for _, targets in loader]
        return flipped[0::2], flipped[1::2]  # worker 0 loads items 0, 2, 4...; worker 1 items 1, 3, 5...

    torch.manual_seed(0)
    first_epoch = flips_per_worker()
    second_epoch = flips_per_worker()
    assert first_epoch[0] != first_epoch[1]  # forked copies of one generator would flip alike
    assert second_epoch != first_epoch  # new workers, new seeds
    assert 8 < sum(first_epoch[0] + first_epoch[1]) < 24


def test_checkpoint_state_holds_the_class_names(tmp_path):
    datamodule = instantiate(data_config("raccoon", tmp_path).data)
    state = datamodule.state_dict()
    assert state == {"class_names": ["raccoon"], "label_to_category_id": {1: 1}}
    datamodule.load_state_dict(state)
    with pytest.raises(DataError, match=r"trained on classes \['dog'\]"):
        datamodule.load_state_dict({"class_names": ["dog"]})


@pytest.mark.shared_data
def test_data_check_cli_composes_the_project_config(tmp_path, capsys):
    conf = tmp_path / "conf"
    (conf / "paths").mkdir(parents=True)
    (conf / "paths" / "check_test.yaml").write_text(
        f"root_dir: {PROJECT}\ndata_dir: {tmp_path / 'data'}\nshared_dir: {SHARED}\noutput_dir: {tmp_path / 'out'}\n")
    (conf / "train.yaml").write_text(
        "defaults:\n  - paths: check_test\n  - data: shapes\n  - _self_\n"
        f"hydra:\n  searchpath:\n    - file://{PROJECT / 'conf'}\n")

    assert check_main(["data=raccoon"], config_dir=conf) == 0
    report = capsys.readouterr().out
    assert "check_images: full" in report and "images: 160   without training boxes: 0" in report
    assert "images: 40   without training boxes: 0" in report and "RESULT: OK" in report

    status = check_main(["data.train.generator.num_train=5", "data.train.generator.num_val=2",
                         "data.check_images=header"], config_dir=conf)
    report = capsys.readouterr().out
    assert status == 0 and "check_images: header" in report and "images: 5 " in report

    assert check_main(["data=coco"], config_dir=conf) == 1
    assert capsys.readouterr().out.strip() == (
        f"DATA ERROR: {tmp_path / 'data'}/coco/annotations/instances_train2017.json: annotation file not found")


def test_voc_split_list_missing_is_an_error_at_setup(tmp_path):
    source = VocSource(tmp_path, "train")
    datamodule = DetectionDataModule(train=source, val=source, num_workers=0)
    with pytest.raises(DataError, match=f"{tmp_path}/ImageSets/Main/train.txt: split list for 'train' not found"):
        datamodule.setup("fit")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_equal_the_dataset_samples(tmp_path, num_workers):
    # Loaders move uint8 arrays out of the workers and convert on arrival: same result as dataset[i].
    records = []
    for index, (width, height) in enumerate([(40, 30), (30, 40), (33, 21)]):
        write_image(tmp_path / f"{index}.png", width, height, seed=index)
        records.append(ImageRecord(tmp_path / f"{index}.png", 10 + index, width, height,
                                   boxes=np.array([[1, 2, 9, 7.5]], np.float32), labels=np.array([index + 1])))
    dataset = DetectionDataset(records)
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate_detection)
    batches = list(loader)
    assert [len(images) for images, _ in batches] == [2, 1]
    for index, (image, target) in enumerate(img_tgt for images, targets in batches for img_tgt in zip(images, targets)):
        expected_image, expected_target = dataset[index]
        assert image.dtype == torch.float32 and image.is_contiguous()
        torch.testing.assert_close(image, expected_image, rtol=0, atol=0)
        assert target.keys() == expected_target.keys()
        for key in target:
            torch.testing.assert_close(target[key], expected_target[key], rtol=0, atol=0)
        assert int(target["image_id"]) == 10 + index and target["labels"].tolist() == [index + 1]
