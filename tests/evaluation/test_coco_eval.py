"""COCOEvaluator against pycocotools' COCOeval run directly, on a hand-written fixture and on coco128."""

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tests.shared_data import COCO128

from frcnn.evaluation import COCOEvaluator, available_backends

COCO128_JSON = COCO128 / "annotations" / "instances.json"

# The order of COCOeval's `stats` (its 12 summary lines).
STATS_KEYS = [
    "map", "map_50", "map_75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
]  # fmt: skip

# Labels 1..4 map to non-contiguous, non-monotonic COCO category ids, as COCO's own do.
CLASS_NAMES = ["cat", "dog", "bird", "boat"]
LABEL_TO_CATEGORY = {1: 7, 2: 1, 3: 90, 4: 3}


def _ann(image_id, category_id, bbox, iscrowd=0):
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": bbox[2] * bbox[3],
        "iscrowd": iscrowd,
    }


# Five images, three classes with boxes of every size, a crowd box (image 2), a class without any
# box ("boat", category 3), and an image without ground truth (5). Integer coordinates: exact in float32.
FIXTURE_GT = {
    "images": [{"id": i, "width": 200, "height": 200} for i in range(1, 6)],
    "categories": [{"id": c, "name": str(c)} for c in (1, 3, 7, 90)],
    "annotations": [
        _ann(1, 7, [10, 10, 20, 20]),  # small
        _ann(1, 7, [50, 50, 60, 40]),  # medium
        _ann(1, 1, [0, 100, 120, 90]),  # large
        _ann(2, 1, [5, 5, 30, 30]),
        _ann(2, 90, [100, 100, 50, 50]),
        _ann(2, 7, [0, 0, 200, 60], iscrowd=1),
        _ann(3, 90, [20, 30, 8, 8]),
        _ann(3, 90, [40, 30, 8, 8]),
        _ann(3, 7, [100, 20, 90, 120]),
        _ann(4, 1, [30, 40, 40, 40]),
    ],
}
for _i, _a in enumerate(FIXTURE_GT["annotations"]):
    _a["id"] = _i + 1


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


FIXTURE_DETECTIONS = [
    _det(1, 7, [11, 11, 20, 19], 0.95),
    _det(1, 7, [52, 48, 58, 40], 0.6),
    _det(1, 7, [10, 10, 20, 20], 0.3),  # duplicate
    _det(1, 1, [5, 100, 110, 95], 0.8),
    _det(1, 90, [10, 10, 20, 20], 0.4),  # wrong class
    _det(2, 1, [6, 4, 28, 31], 0.7),
    _det(2, 90, [110, 105, 45, 50], 0.5),
    _det(2, 7, [10, 5, 40, 30], 0.9),  # inside the crowd box: ignored
    _det(2, 7, [150, 100, 30, 30], 0.2),
    _det(3, 90, [21, 31, 8, 7], 0.85),
    _det(3, 90, [60, 30, 8, 8], 0.45),
    _det(3, 7, [95, 25, 90, 110], 0.65),
    _det(3, 3, [0, 0, 10, 10], 0.35),  # a class without ground truth
    _det(4, 1, [28, 42, 40, 38], 0.55),
    _det(4, 1, [100, 100, 20, 20], 0.75),
    _det(5, 1, [10, 10, 50, 50], 0.9),  # an image without ground truth
    _det(5, 7, [0, 0, 5, 5], 0.1),
]


def _xyxy(bboxes) -> torch.Tensor:
    """COCO [x, y, w, h] list -> (N, 4) float32 xyxy."""
    boxes = torch.tensor(bboxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1).float()


def to_model_io(ground_truth: dict, detections: list[dict], category_to_label: dict[int, int]):
    """COCO ground truth and results -> (preds, targets) in the project's format, one per image."""
    preds, targets = [], []
    for image in ground_truth["images"]:
        image_id = image["id"]
        anns = [a for a in ground_truth["annotations"] if a["image_id"] == image_id]
        dets = [d for d in detections if d["image_id"] == image_id]
        crowd = [a for a in anns if a["iscrowd"]]
        plain = [a for a in anns if not a["iscrowd"]]
        targets.append(
            {
                "boxes": _xyxy([a["bbox"] for a in plain]),
                "labels": torch.tensor(
                    [category_to_label[a["category_id"]] for a in plain], dtype=torch.int64
                ),
                "image_id": torch.tensor(image_id),
                "ignore_boxes": _xyxy([a["bbox"] for a in crowd]),
                "ignore_labels": torch.tensor(
                    [category_to_label[a["category_id"]] for a in crowd], dtype=torch.int64
                ),
            }
        )
        preds.append(
            {
                "boxes": _xyxy([d["bbox"] for d in dets]),
                "scores": torch.tensor([d["score"] for d in dets], dtype=torch.float32),
                "labels": torch.tensor(
                    [category_to_label[d["category_id"]] for d in dets], dtype=torch.int64
                ),
            }
        )
    return preds, targets


def reference_cocoeval(coco_gt: COCO, detections: list[dict]) -> COCOeval:
    """pycocotools' own pipeline: loadRes, evaluate, accumulate, summarize."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluation = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation


def coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = copy.deepcopy(dataset)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def expected_metrics(evaluation: COCOeval, label_to_category: dict[int, int], class_names: list[str]):
    """COCOeval's stats and per-class APs as our dict (-1, "nothing to average", as NaN)."""
    expected = {key: (math.nan if v == -1 else float(v)) for key, v in zip(STATS_KEYS, evaluation.stats)}
    category_ids = sorted(evaluation.params.catIds)
    for label, name in enumerate(class_names, start=1):
        k = category_ids.index(label_to_category[label])
        for key, precision in (("ap", evaluation.eval["precision"][:, :, k, 0, -1]),
                               ("ap50", evaluation.eval["precision"][0, :, k, 0, -1])):  # fmt: skip
            valid = precision[precision > -1]
            expected[f"{key}/{name}"] = float(valid.mean()) if valid.size else math.nan
    return expected


def assert_metrics_equal(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert actual.keys() == expected.keys()
    torch.testing.assert_close(
        torch.tensor([actual[k] for k in expected], dtype=torch.float64),
        torch.tensor(list(expected.values()), dtype=torch.float64),
        rtol=0,
        atol=1e-6,
        equal_nan=True,
    )


@pytest.mark.parametrize("backend", available_backends())
def test_fixture_equals_cocoeval(backend):
    category_to_label = {c: label for label, c in LABEL_TO_CATEGORY.items()}
    preds, targets = to_model_io(FIXTURE_GT, FIXTURE_DETECTIONS, category_to_label)
    evaluator = COCOEvaluator(CLASS_NAMES, LABEL_TO_CATEGORY, backend=backend)
    evaluator.update(preds[:2], targets[:2])  # two batches
    evaluator.update(preds[2:], targets[2:])
    actual = evaluator.compute()

    reference = reference_cocoeval(coco_from_dict(FIXTURE_GT), FIXTURE_DETECTIONS)
    expected = expected_metrics(reference, LABEL_TO_CATEGORY, CLASS_NAMES)
    assert_metrics_equal(actual, expected)
    # The fixture exercises what it claims: a class without boxes, nothing large enough to skip.
    assert math.isnan(actual["ap/boat"]) and 0 < actual["map"] < 1
    assert not any(math.isnan(actual[k]) for k in STATS_KEYS)
    # The raw precision array, in label order.
    k = sorted(reference.params.catIds).index(LABEL_TO_CATEGORY[1])
    np.testing.assert_allclose(
        evaluator.last_result.precision[:, :, 0], reference.eval["precision"][:, :, k], atol=1e-12
    )


def test_ignore_boxes_are_crowd_regions():
    """The detection inside image 2's crowd box costs nothing; as a plain box it would be an FP."""
    category_to_label = {c: label for label, c in LABEL_TO_CATEGORY.items()}
    preds, targets = to_model_io(FIXTURE_GT, FIXTURE_DETECTIONS, category_to_label)
    with_crowd = COCOEvaluator(CLASS_NAMES, LABEL_TO_CATEGORY)
    with_crowd.update(preds, targets)
    no_crowd_targets = [
        dict(t, ignore_boxes=torch.zeros(0, 4), ignore_labels=torch.zeros(0, dtype=torch.int64))
        for t in targets
    ]
    without = COCOEvaluator(CLASS_NAMES, LABEL_TO_CATEGORY)
    without.update(preds, no_crowd_targets)
    assert with_crowd.compute()["ap/cat"] > without.compute()["ap/cat"]


def test_backends_identical():
    if len(available_backends()) < 2:
        pytest.skip("needs both pycocotools and faster_coco_eval")
    generator = torch.Generator().manual_seed(0)
    preds, targets = [], []
    for image_id in range(60):
        num_gt = int(torch.randint(0, 6, (), generator=generator))
        xy = torch.rand(num_gt, 2, generator=generator) * 300
        gt = torch.cat([xy, xy + 4 + torch.rand(num_gt, 2, generator=generator) * 150], dim=1)
        labels = torch.randint(1, 6, (num_gt,), generator=generator)
        jittered = gt + torch.randn(num_gt, 4, generator=generator) * 4
        xy = torch.rand(5, 2, generator=generator) * 300
        false = torch.cat([xy, xy + 4 + torch.rand(5, 2, generator=generator) * 100], dim=1)
        num_crowd = int(image_id % 7 == 0)
        preds.append({
            "boxes": torch.cat([jittered, false]),
            "scores": torch.rand(num_gt + 5, generator=generator),
            "labels": torch.cat([labels, torch.randint(1, 6, (5,), generator=generator)]),
        })  # fmt: skip
        targets.append({
            "boxes": gt, "labels": labels, "image_id": torch.tensor(image_id),
            "ignore_boxes": torch.tensor([[0.0, 0.0, 100.0, 100.0]] * num_crowd),
            "ignore_labels": torch.ones(num_crowd, dtype=torch.int64),
        })  # fmt: skip
    results = {}
    for backend in ("pycocotools", "faster_coco_eval"):
        evaluator = COCOEvaluator([f"c{i}" for i in range(1, 6)], backend=backend)
        evaluator.update(preds, targets)
        results[backend] = (evaluator.compute(), evaluator.last_result)
    (slow, slow_result), (fast, fast_result) = results["pycocotools"], results["faster_coco_eval"]
    assert_metrics_equal(fast, slow)
    np.testing.assert_allclose(fast_result.precision, slow_result.precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast_result.recall, slow_result.recall, rtol=0, atol=1e-12)


def test_auto_picks_the_fastest_installed():
    assert COCOEvaluator(CLASS_NAMES).backend == available_backends()[0]
    assert available_backends()[0] == "faster_coco_eval"  # measured: bench/metrics_cost.py


def _coco128_with_detections():
    """coco128's real annotations, and seeded synthetic detections: most boxes found with jitter, some
    twice, plus false positives of random classes."""
    with open(COCO128_JSON) as f:
        dataset = json.load(f)
    rng = np.random.default_rng(0)
    category_ids = [c["id"] for c in dataset["categories"]]
    sizes = {image["id"]: (image["width"], image["height"]) for image in dataset["images"]}
    detections = []
    for ann in dataset["annotations"]:
        if rng.random() < 0.2:
            continue
        for _ in range(1 + int(rng.random() < 0.15)):
            x, y, w, h = ann["bbox"]
            jx, jy, jw, jh = rng.normal(0, 0.1, 4)
            box = [x + jx * w, y + jy * h, w * (1 + jw), h * (1 + jh)]
            detections.append(_det(ann["image_id"], ann["category_id"], box, float(rng.random())))
    for image_id, (width, height) in sizes.items():
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(5, width / 2), rng.uniform(5, height / 2)
            box = [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]
            detections.append(_det(image_id, int(rng.choice(category_ids)), box, float(rng.random() * 0.7)))
    return dataset, detections


def _as_float32(bboxes: list[list[float]]) -> list[list[float]]:
    """xywh -> the xywh our evaluator gives COCOeval after the float32 xyxy round trip."""
    xyxy = _xyxy(bboxes).double()
    return torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1).tolist()


@pytest.mark.shared_data
def test_coco128_equals_cocoeval():
    dataset, detections = _coco128_with_detections()
    category_ids = sorted(c["id"] for c in dataset["categories"])
    label_to_category = {label: c for label, c in enumerate(category_ids, start=1)}
    category_to_label = {c: label for label, c in label_to_category.items()}
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    class_names = [names[c] for c in category_ids]
    preds, targets = to_model_io(dataset, detections, category_to_label)
    evaluator = COCOEvaluator(class_names, label_to_category)
    for start in range(0, len(preds), 16):
        evaluator.update(preds[start : start + 16], targets[start : start + 16])
    actual = evaluator.compute()

    # The ground truth built the same way, independently: the boxes our targets carry (float32) and
    # area = w * h. Every image of the JSON is there, the two without boxes included.
    same_way = copy.deepcopy(dataset)
    same_dets = copy.deepcopy(detections)
    for ann, bbox in zip(same_way["annotations"], _as_float32([a["bbox"] for a in same_way["annotations"]])):
        ann["bbox"], ann["area"] = bbox, bbox[2] * bbox[3]
    for det, bbox in zip(same_dets, _as_float32([d["bbox"] for d in same_dets])):
        det["bbox"] = bbox
    reference = reference_cocoeval(coco_from_dict(same_way), same_dets)
    assert_metrics_equal(actual, expected_metrics(reference, label_to_category, class_names))
    assert 0.2 < actual["map"] < 0.9

    # The official JSON as it is (COCO(path)): its `area` is the segmentation area, which only moves
    # boxes between the small / medium / large ranges; every other number is the same.
    with contextlib.redirect_stdout(io.StringIO()):
        official = reference_cocoeval(COCO(str(COCO128_JSON)), same_dets)
    expected = expected_metrics(official, label_to_category, class_names)
    size_keys = {"map_small", "map_medium", "map_large", "mar_small", "mar_medium", "mar_large"}
    assert_metrics_equal(
        {k: v for k, v in actual.items() if k not in size_keys},
        {k: v for k, v in expected.items() if k not in size_keys},
    )


def test_no_ground_truth_and_no_detections():
    empty = COCOEvaluator(["a", "b"])
    assert all(math.isnan(v) for v in empty.compute().values())  # nothing updated

    misses = COCOEvaluator(["a", "b"])
    no_dets = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    target = {"boxes": torch.tensor([[0.0, 0.0, 50.0, 50.0]]), "labels": torch.tensor([1]), "image_id": torch.tensor(3),
              "ignore_boxes": torch.zeros(0, 4), "ignore_labels": torch.zeros(0, dtype=torch.int64)}  # fmt: skip
    misses.update([no_dets], [target])
    metrics = misses.compute()
    assert metrics["map"] == 0.0 and metrics["mar_100"] == 0.0 and metrics["ap/a"] == 0.0
    assert math.isnan(metrics["ap/b"])


def test_summary_and_pr_curves():
    evaluator = COCOEvaluator(["a", "b"])
    box = torch.tensor([[10.0, 10.0, 60.0, 60.0]])
    evaluator.update(
        [{"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}],
        [{"boxes": box, "labels": torch.tensor([1]), "image_id": torch.tensor(0)}],  # no ignore keys: none
    )
    metrics = evaluator.compute()
    assert metrics["map"] == pytest.approx(1.0, abs=1e-6)
    lines = evaluator.summary().splitlines()
    assert lines[0] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000"
    assert lines[5] == " Average Precision  (AP) @[ IoU=0.50:0.95 | area= large | maxDets=100 ] = -1.000"
    curves = evaluator.last_result.pr_curves(0.5)
    assert list(curves) == ["a"]  # "b" has no ground truth
    recall, precision = curves["a"]
    torch.testing.assert_close(torch.from_numpy(recall), torch.linspace(0, 1, 101, dtype=torch.float64))
    torch.testing.assert_close(torch.from_numpy(precision), torch.ones(101, dtype=torch.float64))
