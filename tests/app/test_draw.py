"""The one drawing path of validation images and predictions (PNG, TensorBoard; W&B's overlay)."""

from __future__ import annotations

import torch

from frcnn.app.draw import GT_COLOUR, PRED_COLOUR, draw_detections, wandb_boxes

NAMES = ["cat", "dog"]


def _scene():
    image = torch.full((3, 40, 60), 0.5)
    target = {"boxes": torch.tensor([[5.0, 5.0, 20.0, 30.0]]), "labels": torch.tensor([1])}
    pred = {
        "boxes": torch.tensor([[30.0, 10.0, 50.0, 35.0], [1.0, 1.0, 4.0, 4.0]]),
        "scores": torch.tensor([0.9, 0.2]),
        "labels": torch.tensor([2, 1]),
    }
    return image, target, pred


def test_ground_truth_green_and_confident_detections_red_at_their_pixels():
    image, target, pred = _scene()
    drawn = draw_detections(image, target, pred, NAMES, score_threshold=0.5)  # (3, H, W) uint8
    assert drawn.shape == (3, 40, 60) and drawn.dtype == torch.uint8
    grey = torch.tensor([128, 128, 128], dtype=torch.uint8)  # round(0.5 * 255)
    # width-1 outlines on the box edges: x1 column of the ground truth, below its caption
    assert drawn[:, 25, 5].tolist() == list(GT_COLOUR)
    assert drawn[:, 34, 30].tolist() == list(PRED_COLOUR)  # left edge of the 0.9 detection
    assert drawn[:, 20, 12].tolist() == grey.tolist()  # inside the ground-truth box: untouched
    # the 0.2 detection is below the threshold: nothing drawn at its corner
    assert drawn[:, 2, 1].tolist() == grey.tolist()


def test_wandb_overlay_keeps_every_detection_with_its_score():
    _, target, pred = _scene()
    boxes = wandb_boxes(target, pred, {1: "cat", 2: "dog"})
    truth, predicted = boxes["ground_truth"]["box_data"], boxes["predictions"]["box_data"]
    assert truth == [{"position": {"minX": 5.0, "minY": 5.0, "maxX": 20.0, "maxY": 30.0}, "domain": "pixel",
                      "class_id": 1, "box_caption": "cat"}]  # fmt: skip
    assert [p["class_id"] for p in predicted] == [2, 1]
    assert [round(p["scores"]["score"], 6) for p in predicted] == [0.9, 0.2]  # the slider filters these
    assert [p["box_caption"] for p in predicted] == ["dog 0.90", "cat 0.20"]
