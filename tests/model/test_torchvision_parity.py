"""Parity with torchvision: its FPN Faster R-CNNs, imported into ours, compute the same proposals,
detections and training losses; a COCO-style checkpoint starts a fine-tuning run with other classes.

Our detectors are built from the real configs (``model=faster_rcnn_fpn[_mobilenet]``), changed only
where torchvision's are changed too (image size, score threshold, detections per image), so the
test also proves that the configs are torchvision's defaults. Nothing downloads.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close
from torchvision.models.detection.transform import resize_boxes

from frcnn.interop.torchvision_import import CLASS_SPECIFIC, apply_init_from, load_torchvision_detection
from frcnn.interop.torchvision_keys import torchvision_to_ours
from frcnn.layers.batchnorm import convert_frozen_batchnorm
from frcnn.layers.training_rewrite import FrozenBNConv2d, optimize_for_training
from frcnn.modeling import LOSS_NAMES

from .fpn_builders import build_ours, build_torchvision
from .synthetic import batch

# Small images of different sizes; the resize factors (2 and 1.28) map boxes back exactly.
MIN_SIZE, MAX_SIZE = 256, 384
SCORE_THRESH, DETECTIONS = 0.02, 400  # random weights: keep hundreds of low-scoring boxes
PROPOSALS = 300  # per image after NMS (default 1000 / 2000), to keep the R-CNN stage cheap on a CPU
TV_KWARGS = dict(
    min_size=MIN_SIZE,
    max_size=MAX_SIZE,
    box_score_thresh=SCORE_THRESH,
    box_detections_per_img=DETECTIONS,
    rpn_post_nms_top_n_test=PROPOSALS,
    rpn_post_nms_top_n_train=PROPOSALS,
)
OUR_OVERRIDES = [
    "data.num_classes=90",  # torchvision's COCO head: 91 outputs with background
    "backbone.frozen_bn=false",  # torchvision without weights uses BatchNorm2d
    "backbone.trainable_layers=null",
    f"model.transform.min_size={MIN_SIZE}",
    f"model.transform.max_size={MAX_SIZE}",
    f"model.roi_heads.score_threshold={SCORE_THRESH}",
    f"model.roi_heads.detections_per_image={DETECTIONS}",
    f"model.roi_heads.detections_per_class={DETECTIONS}",
    f"model.rpn.post_nms_top_n.test={PROPOSALS}",
    f"model.rpn.post_nms_top_n.train={PROPOSALS}",
]
TV_LOSS_NAMES = {
    "loss_rpn_cls": "loss_objectness",
    "loss_rpn_reg": "loss_rpn_box_reg",
    "loss_cls": "loss_classifier",
    "loss_box_reg": "loss_box_reg",
}


def images() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.rand(3, 128, 192, generator=g), torch.rand(3, 200, 200, generator=g)]  # -> 256x384, 256x256


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(("resnet50_fpn", False), id="resnet50_fpn"),
        pytest.param(("mobilenet_v3_large_fpn", False), id="mobilenet_v3_large_fpn"),
        # ~30 CPU-seconds more; the fast tests cover the rewrite on ResNet-18 (tests/model/test_training_rewrite.py)
        pytest.param(("resnet50_fpn", True), id="resnet50_fpn-training_rewrite", marks=pytest.mark.slow),
    ],
)
def pair(request):
    """torchvision's model and ours with its weights; ``training_rewrite``: both with frozen
    BatchNorm (torchvision's fine-tuning setting), ours with the training rewrite on (folded frozen
    BatchNorm, channels-last, sparse RPN backward: ``frcnn.layers.training_rewrite``)."""
    arch, rewrite = request.param
    theirs = build_torchvision(arch, images(), **TV_KWARGS)
    ours, init_from = build_ours(arch, OUR_OVERRIDES)
    assert init_from is None
    report = load_torchvision_detection(ours, theirs.state_dict())
    assert report.reinitialised == [] and report.checkpoint_classes == 90
    if rewrite:
        convert_frozen_batchnorm(theirs)
        optimize_for_training(convert_frozen_batchnorm(ours))
        assert sum(isinstance(m, FrozenBNConv2d) for m in ours.modules()) == 53  # every trunk conv
    return theirs.eval(), ours.eval()


def box_tolerance(ours) -> float:
    """Pixels. The plain model sums as torchvision does (1e-4: RoIAlign's order); channels-last
    and folded convolutions sum in another order, ~1e-6 relative on features, which the box
    decoding turns into up to a few thousandths of a pixel on these random-weight models."""
    return 1e-2 if any(isinstance(m, FrozenBNConv2d) for m in ours.modules()) else 1e-4


def lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """Indices ordering rows by keys[0], then keys[1], ...: an order that ties in score cannot change."""
    order = torch.arange(keys[0].shape[0])
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def by_box(boxes: torch.Tensor, *first: torch.Tensor) -> torch.Tensor:
    return lexsort(*first, *boxes.unbind(dim=1))


def test_proposals_and_detections_match_torchvision(pair):
    theirs, ours = pair
    inputs = images()
    original_sizes = [tuple(im.shape[-2:]) for im in inputs]
    with torch.no_grad():
        image_list, _ = theirs.transform(inputs)
        features = theirs.backbone(image_list.tensors)
        proposals, _ = theirs.rpn(image_list, features)
        detections, _ = theirs.roi_heads(features, proposals, image_list.image_sizes)
        detections = theirs.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        out = ours(inputs)

    for i in range(len(inputs)):
        expected = resize_boxes(proposals[i], image_list.image_sizes[i], original_sizes[i])
        got = out.proposals[i]
        assert got.shape == expected.shape == (PROPOSALS, 4)
        assert_close(got[by_box(got)], expected[by_box(expected)], rtol=0, atol=box_tolerance(ours))

        want, det = detections[i], out.detections[i]
        assert det["boxes"].shape[0] >= 200 and det["boxes"].shape == want["boxes"].shape
        o_ours, o_tv = by_box(det["boxes"], det["labels"]), by_box(want["boxes"], want["labels"])
        assert torch.equal(det["labels"][o_ours], want["labels"][o_tv])
        assert_close(det["boxes"][o_ours], want["boxes"][o_tv], rtol=0, atol=box_tolerance(ours))
        assert_close(det["scores"][o_ours], want["scores"][o_tv], rtol=0, atol=1e-4)
        assert (det["scores"][:-1] >= det["scores"][1:]).all()  # ours come best first


def test_training_losses_match_torchvision_without_sampling(pair):
    theirs, ours = pair
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 100.0, 120.0], [50.0, 30.0, 200.0, 90.0]]), "labels": torch.tensor([3, 17])},
        {"boxes": torch.tensor([[30.0, 40.0, 150.0, 190.0]]), "labels": torch.tensor([1])},
    ]
    # Sampling off: every labelled anchor and every proposal (+ ground truth) enters the losses.
    everything = 10**8
    theirs.rpn.fg_bg_sampler.batch_size_per_image = everything
    theirs.roi_heads.fg_bg_sampler.batch_size_per_image = everything
    ours.rpn.batch_size_per_image = everything
    ours.roi_heads.batch_size_per_image = everything
    theirs.train()
    ours.train()
    try:  # both in training mode: BatchNorm on batch statistics, training top-n, proposals + gt
        with torch.no_grad():
            expected = theirs(images(), targets)
            got = ours(images(), targets).losses
    finally:
        theirs.eval()
        ours.eval()
    for name in LOSS_NAMES:
        assert_close(got[name], expected[TV_LOSS_NAMES[name]], rtol=0, atol=1e-4)
    assert got["loss_rpn_reg"] > 0 and got["loss_box_reg"] > 0


def test_fine_tuning_from_a_coco_checkpoint_with_other_classes(tmp_path):
    """A COCO-style checkpoint (torchvision's MobileNetV3 FPN with frozen BatchNorm, 91 outputs)
    into a 2-class model from the configs: all but the class layers load, then it trains."""
    from torchvision.models import mobilenet_v3_large
    from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)  # what torchvision's builder does when given COCO weights, minus the download
    trunk = _mobilenet_extractor(mobilenet_v3_large(norm_layer=FrozenBatchNorm2d), True, 3)
    anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    coco = TorchvisionFasterRCNN(trunk, 91, rpn_anchor_generator=anchors, rpn_score_thresh=0.05)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # no constant tensors (BatchNorm's 1s and 0s, zero biases): each shows its origin
        for key, value in coco.state_dict().items():
            noise = torch.rand(value.shape, generator=g)
            value.mul_(0.9 + 0.2 * noise) if key.endswith("running_var") else value.add_(0.01 * (noise - 0.5))
    path = tmp_path / "coco.pth"
    torch.save(coco.state_dict(), path)

    model, init_from = build_ours(
        "mobilenet_v3_large_fpn",
        ["data.num_classes=2", "model.transform.min_size=128", "model.transform.max_size=128",
         "model.rpn.post_nms_top_n.train=200", "model.roi_heads.batch_size_per_image=64", f"init_from={path}"],
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_init_from(model, init_from)
    source = torchvision_to_ours(torch.load(path, weights_only=True))
    state = model.state_dict()
    for key, value in state.items():
        if key in CLASS_SPECIFIC:  # re-initialised: the model's own fresh layers, 2 classes
            assert_close(value, before[key], rtol=0, atol=0)
        else:
            assert_close(value, source[key], rtol=0, atol=0, msg=key)
    assert state["roi_heads.predictor.cls_score.weight"].shape == (3, 1024)
    assert state["roi_heads.predictor.bbox_pred.weight"].shape == (8, 1024)

    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("backbone.body.") for n in frozen)  # torchvision's 3 trainable stages
    images_, targets = batch(2)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    model.train()
    history = []
    for _ in range(3):
        losses = model(images_, targets).losses
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert history[-1]["loss_cls"] < history[0]["loss_cls"]  # the new class layers learn
    for name, p in model.named_parameters():
        if name in frozen:
            assert_close(p, frozen[name], rtol=0, atol=0)
    assert not torch.equal(model.roi_heads.box_head.fc1.weight, source["roi_heads.box_head.fc1.weight"])
