"""ConcatSource ("07+12"), conf/data/voc0712.yaml, and VOC's classes: auto."""

import numpy as np
import pytest
from datafiles import write_coco, write_voc
from hydra.utils import instantiate

from frcnn.data import CocoSource, ConcatSource, DataError, DetectionDataModule, VocSource, load_split
from frcnn.data.check import run_check
from frcnn.tools.compose import compose_project_config

VOC07 = {"a": [("dog", 1, 1, 10, 20)], "b": [("cat", 5, 6, 30, 40)]}
VOC12 = {"x": [("cat", 2, 2, 8, 8)], "y": [], "z": [("dog", 3, 3, 9, 9, 1)]}  # z's dog is difficult


def test_parts_follow_each_other_with_unique_image_ids(tmp_path):
    write_voc(tmp_path / "VOC2007", VOC07, split="trainval")
    write_voc(tmp_path / "VOC2012", VOC12, split="trainval")
    parts = [VocSource(tmp_path / f"VOC{year}", "trainval", classes=["cat", "dog"]) for year in (2007, 2012)]
    source = ConcatSource(parts)
    assert source.class_names == ["cat", "dog"] and source.category_ids == [1, 2] and source.keep_empty
    records, problems = load_split(source, "header")
    assert problems == []
    assert [r.path.name for r in records] == ["a.jpg", "b.jpg", "x.jpg", "y.jpg", "z.jpg"]
    assert [r.image_id for r in records] == [0, 1, 2, 3, 4]  # VOC ids 0, 1 then 0, 1, 2 shifted by 2
    np.testing.assert_array_equal(records[2].boxes, np.array([[1, 1, 8, 8]], np.float32))
    np.testing.assert_array_equal(records[4].ignore_labels, [2])
    assert repr(source).startswith("ConcatSource(VocSource(root=")


def test_a_coco_part_keeps_its_ids_and_problems_name_their_files(tmp_path):
    ann_file = write_coco(tmp_path / "coco", [{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}],
                          sizes={5: (64, 48), 9: (48, 64)})
    second = write_coco(tmp_path / "coco2", [{"image_id": 3, "category_id": 7, "bbox": [1, 2, 3, 4]}],
                        sizes={2: (64, 48), 3: (48, 64)})
    source = ConcatSource([CocoSource(tmp_path / "coco" / "images", ann_file),
                           CocoSource(tmp_path / "coco2" / "images", second)])
    records, problems = source.load()
    assert [r.image_id for r in records] == [5, 9, 10, 11]  # 2, 3 shifted past 9
    assert [str(p) for p in problems] == [f"{ann_file}: annotation id 1 refers to image id 1, which is not among "
                                          "the (valid) images"]


def test_parts_must_agree(tmp_path):
    write_voc(tmp_path / "v", VOC07)
    cats = VocSource(tmp_path / "v", "train", classes=["cat", "dog"])
    with pytest.raises(DataError, match=r"has classes \['dog', 'cat'\], but VocSource.* has \['cat', 'dog'\]"):
        ConcatSource([cats, VocSource(tmp_path / "v", "train", classes=["dog", "cat"])])
    ann_file = write_coco(tmp_path / "c", [], categories=[{"id": 4, "name": "cat"}, {"id": 9, "name": "dog"}])
    with pytest.raises(DataError, match=r"maps its labels to category ids \[4, 9\], but VocSource.* to \[1, 2\]"):
        ConcatSource([cats, CocoSource(tmp_path / "c" / "images", ann_file)])
    with pytest.raises(DataError, match="the parts disagree on keep_empty"):
        ConcatSource([cats, VocSource(tmp_path / "v", "train", classes=["cat", "dog"], keep_empty=False)])
    with pytest.raises(DataError, match="at least one source"):
        ConcatSource([])


def test_voc0712_config(tmp_path):
    """conf/data/voc0712.yaml as Hydra builds it: 07 trainval + 12 trainval -> 07 test."""
    devkit = tmp_path / "VOCdevkit"
    write_voc(devkit / "VOC2007", VOC07, split="trainval")
    write_voc(devkit / "VOC2007", {"t": [("horse", 1, 1, 10, 10)]}, split="test")
    write_voc(devkit / "VOC2012", VOC12, split="trainval")
    cfg = compose_project_config(["~experiment", "data=voc0712", f"paths.data_dir={tmp_path}", "data.num_workers=0"])
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule.sources["train"], ConcatSource) and datamodule.num_classes == 20
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 5 and len(datamodule.datasets["val"]) == 1
    assert [r.image_id for r in datamodule.datasets["train"].records] == [0, 1, 2, 3, 4]
    assert datamodule.datasets["val"].records[0].labels.tolist() == [13]  # horse


def test_voc_auto_classes_read_every_xml(tmp_path):
    write_voc(tmp_path, {"a": [("zebra", 1, 1, 10, 20)], "b": [("ant", 5, 6, 30, 40)]}, split="train")
    write_voc(tmp_path, {"c": [("mole", 1, 1, 5, 5)]}, split="val")  # same Annotations/ folder
    train, val = VocSource(tmp_path, "train", classes="auto"), VocSource(tmp_path, "val", classes="auto")
    assert train.class_names == val.class_names == ["ant", "mole", "zebra"]
    records, _ = train.load()
    assert [r.labels.tolist() for r in records] == [[3], [1]]
    report, _ = run_check(DetectionDataModule(train=train, val=val, num_workers=0))
    assert report.startswith("classes (3): ant, mole, zebra\n  (classes: auto, found in the annotations and sorted")
    with pytest.raises(DataError, match="no such folder"):
        VocSource(tmp_path / "missing", "train", classes="auto")
