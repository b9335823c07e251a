"""Detector-level behaviour: the forward contract, bad targets, the standalone RPN, and overfitting."""

import pytest
import torch
from torch.testing import assert_close
from torchvision.ops import box_iou

from frcnn.modeling import LOSS_NAMES
from frcnn.modeling.transform import InputTransform

from .builders import small_faster_rcnn, small_rpn_detector
from .synthetic import batch


def test_one_forward_gives_losses_and_detections():
    images, targets = batch(2)
    model = small_faster_rcnn().eval()
    with torch.no_grad():
        out = model(images, targets)
    assert set(out.losses) == {*LOSS_NAMES, "loss"}
    assert_close(out.losses["loss"], sum(out.losses[name] for name in LOSS_NAMES))
    assert len(out.detections) == 2 and len(out.proposals) == 2
    for det in out.detections:
        assert det["boxes"].shape[1] == 4 and det["labels"].dtype == torch.int64
        assert ((det["labels"] >= 1) & (det["labels"] <= 2)).all()
    model.train()
    out = model(images, targets)
    assert out.detections is None and set(out.losses) == {*LOSS_NAMES, "loss"}
    assert model(images, targets, return_detections=True).detections is not None
    assert model.eval()(images).losses == {}


def test_loss_weights_make_the_weighted_sum():
    images, targets = batch(1)
    model = small_faster_rcnn()
    model.loss_weights = {"loss_rpn_cls": 2.0, "loss_rpn_reg": 0.0, "loss_cls": 0.5, "loss_box_reg": 1.0}
    torch.manual_seed(3)
    losses = model(images, targets).losses
    expected = 2 * losses["loss_rpn_cls"] + 0.5 * losses["loss_cls"] + losses["loss_box_reg"]
    assert_close(losses["loss"], expected)


def test_detections_are_in_original_image_coordinates():
    transform = InputTransform(min_size=128, max_size=1000, size_divisible=16, image_mean=(0, 0, 0), image_std=(1, 1, 1))
    image = torch.rand(3, 64, 100)
    out = transform([image], [{"boxes": torch.tensor([[10.0, 6.0, 50.0, 32.0]]), "labels": torch.tensor([1])}])
    assert out.image_sizes == [(128, 200)] and out.tensor.shape == (1, 3, 128, 208) and out.padded_size == (128, 208)
    assert out.original_sizes == [(64, 100)]
    assert_close(out.targets[0]["boxes"], torch.tensor([[20.0, 12.0, 100.0, 64.0]]))
    assert_close(out.to_original([out.targets[0]["boxes"]])[0], torch.tensor([[10.0, 6.0, 50.0, 32.0]]))


def test_resize_is_a_no_op_at_target_size():
    transform = InputTransform(600, 1000, 16, (0, 0, 0), (1, 1, 1))
    image = torch.rand(3, 600, 900)
    out = transform([image])
    assert out.image_sizes == [(600, 900)]
    assert_close(out.tensor[0, :, :600, :900], image)


@pytest.mark.parametrize(
    "box, label, message",
    [
        ([30.0, 30.0, 20.0, 40.0], 1, r"image 1, box 0 .* x2 <= x1"),
        ([float("nan"), 30.0, 20.0, 40.0], 1, r"image 1, box 0 .* not finite"),
        ([300.0, 30.0, 320.0, 40.0], 1, r"image 1, box 0 .* wholly outside"),
        ([10.0, 10.0, 20.0, 20.0], 5, r"image 1, box 0: label 5 is outside 1..2"),
    ],
)
def test_bad_targets_raise_naming_image_and_box(box, label, message):
    images, targets = batch(2)
    targets[1] = {"boxes": torch.tensor([box]), "labels": torch.tensor([label])}
    with pytest.raises(ValueError, match=message):
        small_faster_rcnn()(images, targets)


def test_image_without_boxes_is_a_valid_target():
    images, targets = batch(2)
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = small_faster_rcnn()(images, targets).losses
    assert all(torch.isfinite(v) for v in losses.values())
    only_empty = small_faster_rcnn()(images[1:], targets[1:]).losses
    assert only_empty["loss_rpn_reg"].item() == 0.0 and only_empty["loss_box_reg"].item() == 0.0
    assert only_empty["loss_cls"].item() > 0.0  # background is still learned


def test_standalone_rpn_scores_are_objectness():
    images, targets = batch(2)
    model = small_rpn_detector()
    losses = model(images, [{"boxes": t["boxes"], "labels": torch.ones_like(t["labels"])} for t in targets]).losses
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_reg", "loss"}
    model.eval()
    out = model(images)
    for det, proposals in zip(out.detections, out.proposals):
        assert det["boxes"].shape[0] <= 100
        assert_close(det["boxes"], proposals)
        assert ((det["scores"] > 0) & (det["scores"] < 1)).all() and (det["labels"] == 1).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
    with pytest.raises(ValueError, match="single class"):
        type(model)(model.backbone, num_classes=3)


def test_overfit_two_images_finds_every_box():
    images, targets = batch(2)
    model = small_faster_rcnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    history = []
    model.train()
    for _ in range(150):
        losses = model(images, targets).losses
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    for name in LOSS_NAMES:
        start = history[0][name]
        end = sum(h[name] for h in history[-10:]) / 10
        assert end < 0.5 * start, f"{name} fell only from {start:.4f} to {end:.4f}"
    model.eval()
    with torch.no_grad():
        detections = model(images).detections
    for det, target in zip(detections, targets):
        confident = det["scores"] >= 0.5
        iou = box_iou(target["boxes"], det["boxes"][confident])  # (G, D)
        same_class = target["labels"][:, None] == det["labels"][confident][None, :]
        best = (iou * same_class).max(dim=1).values
        assert (best >= 0.7).all(), f"best IoU per object {best.tolist()}"
