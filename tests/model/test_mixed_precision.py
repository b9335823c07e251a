"""Mixed precision on the CPU (bfloat16 autocast, what ``trainer.precision=bf16-mixed`` runs).

Features and head activations may be bfloat16; boxes, deltas, proposals and detections stay float32
(the box coder decodes in float32, RoIAlign samples at float32 coordinates). Tolerances, stated:

- one training step: each loss within 5 % (relative) of float32's and every gradient at cosine > 0.8 to
  float32's, on the same weights and the same
  sampled anchors / RoIs: bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2 % per value),
  accumulated over the backbone and heads;
- inference of a trained detector: every float32 detection scoring >= 0.5 has a bfloat16 detection of
  the same class with IoU >= 0.9 and a score within 0.05, and the other way round.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from frcnn.evaluation import COCOEvaluator
from frcnn.modeling import LOSS_NAMES
from tests.api.checkpoint import shapes_data
from tests.app.helpers import compose_config, script, tiny_overrides

from .builders import small_faster_rcnn
from .synthetic import batch

bf16 = torch.autocast("cpu", dtype=torch.bfloat16)


def reseed(model) -> None:
    """The same anchors and RoIs sampled by the next forward."""
    model.rpn.generator.manual_seed(0)
    model.roi_heads.generator.manual_seed(1)


@pytest.mark.parametrize("pooler", ["crop_and_resize", "roi_align"])
def test_one_bf16_step_matches_float32(pooler):
    images, targets = batch(2)
    model = small_faster_rcnn(pooler=pooler).train()
    reseed(model)
    reference = model(images, targets)
    reference.losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reseed(model)
    with bf16:
        mixed = model(images, targets)
    mixed.losses["loss"].backward()
    for name in (*LOSS_NAMES, "loss"):
        assert mixed.losses[name].dtype == torch.float32
        torch.testing.assert_close(mixed.losses[name], reference.losses[name], rtol=0.05, atol=1e-3)
    for proposals in mixed.proposals:
        assert proposals.dtype == torch.float32
    for name, grad in grads.items():  # the backward runs (RoIAlign's separable one in float32), finite
        mixed_grad = dict(model.named_parameters())[name].grad
        assert mixed_grad is not None and mixed_grad.dtype == torch.float32 and torch.isfinite(mixed_grad).all()
        cosine = torch.nn.functional.cosine_similarity(mixed_grad.flatten(), grad.flatten(), dim=0)
        assert cosine > 0.8, (name, float(cosine))  # bfloat16 gradients: noisier, same direction


@pytest.fixture(scope="module")
def trained_in_bf16():
    """The detector-level overfit test's recipe, every step under bfloat16 autocast."""
    images, targets = batch(2)
    model = small_faster_rcnn(pooler="roi_align")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bfloat16 kernels of this small model slow down badly on a busy machine's threads
    try:
        for _ in range(150):
            with bf16:
                losses = model(images, targets).losses
            optimizer.zero_grad()
            losses["loss"].backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), images, targets


def test_overfit_in_bf16_reaches_map50_of_one(trained_in_bf16):
    model, images, targets = trained_in_bf16
    with torch.no_grad(), bf16:
        detections = model(images).detections
    evaluator = COCOEvaluator(["red", "green"])
    gt = [{**t, "image_id": torch.tensor(i), "ignore_boxes": torch.zeros(0, 4), "ignore_labels": torch.zeros(0)}
          for i, t in enumerate(targets)]
    evaluator.update(detections, gt)
    assert evaluator.compute()["map_50"] == 1.0


def test_bf16_inference_gives_the_float32_detections(trained_in_bf16):
    model, images, _ = trained_in_bf16
    with torch.no_grad():
        full = model(images).detections
        with bf16:
            mixed = model(images).detections
    for a, b in zip(full, mixed):
        assert b["boxes"].dtype == torch.float32 and b["scores"].dtype == torch.float32
        for one, other in ((a, b), (b, a)):
            keep = one["scores"] >= 0.5
            assert keep.any()
            iou = box_iou(one["boxes"][keep], other["boxes"])  # (D, D')
            iou = iou * (one["labels"][keep][:, None] == other["labels"][None, :])
            best, match = iou.max(dim=1)
            assert (best >= 0.9).all(), best
            assert ((one["scores"][keep] - other["scores"][match]).abs() <= 0.05).all()


def test_train_py_trains_in_bf16_mixed_on_the_cpu(tmp_path):
    cfg = compose_config("train", tmp_path, [*tiny_overrides(shapes_data(tmp_path)), "trainer.precision=bf16-mixed",
                                             "test=false"])
    metrics, objects = script("train").train(cfg)
    assert objects["trainer"].global_step == 2
    assert objects["trainer"].precision == "bf16-mixed"
    assert torch.isfinite(torch.tensor(float(metrics["train/loss"])))
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
