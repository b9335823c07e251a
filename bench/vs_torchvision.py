"""Our Faster R-CNN against ``torchvision.models.detection.FasterRCNN`` on the same work, in one process.

Each configuration builds one architecture twice: ours, and torchvision's FasterRCNN given copies
of the same weights (backbone trunk, RPN head, box head, predictor), the same anchors, RoI size,
sampling sizes, thresholds, proposal counts and image size, so both compute the same function
(checked on a batch: proposals and detections are compared). Two warm-up rounds (the first
counts FLOPs and gives the outputs compared, the second is profiled), then timed rounds: both
models train, then both infer, who goes first alternating, then a large matmul gives the machine's
GEMM rate under the same load. Medians are reported, with min / max and process CPU time.

Per model and configuration: images/s in training (forward + backward + SGD step) and inference,
peak step memory, FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``) and the share of
the GEMM rate they reach, a per-stage time breakdown (``_stages.py``: forward-hook clocks in every
timed step, the profiled step for the backward split) and the heaviest ops.
Targets (issue 6, 2-core CPU): train ours / torchvision >= 1.05, inference >= 1.10, peak memory
ours / torchvision <= 1.0, ResNet-50 train FLOP/s >= 50 % of the GEMM rate.

Inputs: seeded synthetic images (coloured rectangles on a smooth background) with 3-5 boxes each,
20 classes, two images per step, already at the configured size (the resize is a no-op). Backbone
BatchNorm is frozen. ResNet-50 has no pretrained weights offline: its BatchNorm statistics are
calibrated on synthetic images before freezing, so activations have a realistic scale.
MobileNetV2 uses ``../shared/weights/mobilenet_v2_imagenet_int8derived.pth`` when present.
SGD runs with lr 0: every step does the optimizer's arithmetic but the weights, hence the work,
stay the same from step to step.

    .venv/bin/python bench/vs_torchvision.py --record     # 3 configs: ~6 min on 2 idle cores, ~15 loaded
    .venv/bin/python bench/vs_torchvision.py --configs mobilenet_v2 --steps 5
    .venv/bin/python bench/vs_torchvision.py --device cuda --steps 20 --warmup 3

Adding a configuration: write ``build_<name>(settings) -> Pair`` and add it to ``CONFIGS``
(``build_resnet50_fpn`` is the example); the runner, the checks and the tables need nothing else.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from _common import GemmRate, machine, record, timed
from _stages import BACKWARD, OPTIMIZER, StageClock, StepProfile, phase, profile_step, stage_hooks
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead as TVRPNHead
from torchvision.ops import MultiScaleRoIAlign

from frcnn.anchors import AnchorGenerator
from frcnn.backbones import build_backbone, build_fpn_backbone
from frcnn.backbones.freezing import convert_frozen_batchnorm
from frcnn.box_head import FCHead, ResNetC5Head
from frcnn.detector import FasterRCNN
from frcnn.inference import optimize_for_inference
from frcnn.matcher import Matcher
from frcnn.roi_heads import RoIHeads
from frcnn.roi_pool import MultiLevelRoIPooler, RoIPooler
from frcnn.rpn import RegionProposalNetwork
from frcnn.transform import InputTransform

SECTION = "## vs torchvision"
NUM_CLASSES = 20
IMAGES_PER_STEP = 2
MOBILENET_WEIGHTS = (
    Path(__file__).resolve().parents[1] / "../shared/weights/mobilenet_v2_imagenet_int8derived.pth"
)
ROI_HEADS_REST = "sample/loss/postprocess"  # the RoI heads' own work: matching, sampling, losses, detections
TARGETS = {"train": 1.05, "infer": 1.10, "memory": 1.0, "gemm_share_r50": 0.5}


@dataclass
class Settings:
    """What every configuration shares: image side, device, and the seed's detector hyperparameters.

    ``image_size``, ``rois_per_image`` (R-CNN training RoIs) and ``test_proposals`` (RPN post-NMS
    top-n at test) are None to take each configuration's default (``Settings.resolve``).
    """

    image_size: int | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rois_per_image: int | None = None
    test_proposals: int | None = None
    anchor_sizes: tuple = (64, 128, 256, 512)  # or one tuple per feature level
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_fg_iou: float = 0.5
    rpn_bg_iou: float = 0.1
    rpn_nms: float = 0.6
    pre_nms_top_n: tuple[int, int] = (12000, 6000)  # (train, test), per feature level
    train_proposals: int = 2000
    roi_positive_fraction: float = 0.25

    def resolve(self, image_size: int, rois_per_image: int, test_proposals: int, **fixed) -> Settings:
        """A copy with this configuration's defaults where the command line gave none, and ``fixed``."""
        return dataclasses.replace(
            self,
            image_size=self.image_size or image_size,
            rois_per_image=self.rois_per_image or rois_per_image,
            test_proposals=self.test_proposals or test_proposals,
            **fixed,
        )

    def describe(self) -> str:
        return (
            f"{self.image_size} x {self.image_size} images; R-CNN {self.rois_per_image} RoIs per image in "
            f"training; {self.test_proposals} proposals per image at test; pre-NMS top-n "
            f"{self.pre_nms_top_n[0]} / {self.pre_nms_top_n[1]} (train / test)"
        )


@dataclass
class Pair:
    """One architecture built twice, plus the submodules whose forwards are each profiled stage."""

    name: str
    description: str
    settings: Settings  # with the configuration's defaults resolved
    ours: nn.Module
    theirs: nn.Module
    ours_stages: dict[str, list[nn.Module]]
    theirs_stages: dict[str, list[nn.Module]]


# --------------------------------------------------------------------------- building the pairs


class TrunkForTorchvision(nn.Module):
    """Our backbone's trunk as torchvision's FasterRCNN wants it: a module with ``out_channels``."""

    def __init__(self, body: nn.Module, out_channels: int) -> None:
        super().__init__()
        self.body = body
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@torch.no_grad()
def calibrate_batchnorm(backbone: nn.Module, image_size: int, seed: int = 0) -> None:
    """Set every BatchNorm's statistics from one batch of synthetic images, then freeze them.

    A randomly initialised ResNet with identity BatchNorm blows activations up layer after layer;
    calibrated statistics give every layer unit-scale outputs, as pretrained ones roughly would.
    """
    for m in backbone.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
    backbone.train()
    images = torch.stack([synthetic_image(image_size, seed + i)[0] for i in range(4)])
    mean = torch.tensor(backbone.image_mean)[:, None, None]
    std = torch.tensor(backbone.image_std)[:, None, None]
    features = backbone((images - mean) / std)
    if getattr(backbone, "c5", None) is not None:
        backbone.c5(features)
    convert_frozen_batchnorm(backbone)


def _ours(
    backbone: nn.Module, s: Settings, pooler: RoIPooler, box_head: Callable[..., nn.Module]
) -> FasterRCNN:
    rpn = partial(
        RegionProposalNetwork,
        anchor_generator=AnchorGenerator(s.anchor_sizes, s.aspect_ratios),
        matcher=Matcher(s.rpn_fg_iou, s.rpn_bg_iou, 0.0, allow_low_quality_matches=True),
        conv_channels=backbone.out_channels,  # torchvision's RPNHead keeps the input width
        batch_size_per_image=s.rpn_batch,
        positive_fraction=s.rpn_positive_fraction,
        pre_nms_top_n={"train": s.pre_nms_top_n[0], "test": s.pre_nms_top_n[1]},
        post_nms_top_n={"train": s.train_proposals, "test": s.test_proposals},
        nms_threshold=s.rpn_nms,
    )
    roi_heads = partial(
        RoIHeads,
        pooler=pooler,
        box_head=box_head,
        # torchvision's R-CNN background is IoU in [0, 0.5): no ignored band below 0.1
        matcher=Matcher(0.5, 0.5, 0.0, allow_low_quality_matches=False),
        batch_size_per_image=s.rois_per_image,
        positive_fraction=s.roi_positive_fraction,
        smooth_l1_beta=1.0 / 9.0,  # torchvision's fastrcnn_loss
    )
    transform = InputTransform(min_size=s.image_size, max_size=s.image_size)
    return FasterRCNN(backbone, NUM_CLASSES, rpn=rpn, roi_heads=roi_heads, transform=transform)


def _theirs(
    ours: FasterRCNN,
    s: Settings,
    roi_pool: nn.Module,
    box_head: nn.Module,
    head_width: int,
    backbone: nn.Module | None = None,
) -> TVFasterRCNN:
    """torchvision's FasterRCNN with copies of ``ours``' weights (box head passed in, already copied;
    ``backbone`` by default a copy of our trunk)."""
    if backbone is None:
        backbone = TrunkForTorchvision(copy.deepcopy(ours.backbone.body), ours.backbone.out_channels)
    if isinstance(s.anchor_sizes[0], tuple):  # one tuple of sizes per level
        anchors = TVAnchorGenerator(s.anchor_sizes, (tuple(s.aspect_ratios),) * len(s.anchor_sizes))
    else:
        anchors = TVAnchorGenerator((tuple(s.anchor_sizes),), (tuple(s.aspect_ratios),))
    rpn_head = TVRPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0])
    ours_rpn = ours.rpn.head
    for tv, mine in (
        (rpn_head.conv[0][0], ours_rpn.conv),
        (rpn_head.cls_logits, ours_rpn.objectness),
        (rpn_head.bbox_pred, ours_rpn.deltas),
    ):
        tv.load_state_dict(mine.state_dict())
    predictor = FastRCNNPredictor(head_width, NUM_CLASSES + 1)
    mine = ours.roi_heads.predictor
    predictor.cls_score.load_state_dict(mine.cls_score.state_dict())
    with torch.no_grad():  # ours has 4K delta rows; torchvision 4(K+1), the first 4 for background
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
        predictor.bbox_pred.weight[4:] = mine.bbox_pred.weight
        predictor.bbox_pred.bias[4:] = mine.bbox_pred.bias
    return TVFasterRCNN(
        backbone,
        min_size=s.image_size,
        max_size=s.image_size,
        image_mean=list(ours.transform.image_mean),
        image_std=list(ours.transform.image_std),
        size_divisible=ours.transform.size_divisible,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=s.pre_nms_top_n[0],
        rpn_pre_nms_top_n_test=s.pre_nms_top_n[1],
        rpn_post_nms_top_n_train=s.train_proposals,
        rpn_post_nms_top_n_test=s.test_proposals,
        rpn_nms_thresh=s.rpn_nms,
        rpn_fg_iou_thresh=s.rpn_fg_iou,
        rpn_bg_iou_thresh=s.rpn_bg_iou,
        rpn_batch_size_per_image=s.rpn_batch,
        rpn_positive_fraction=s.rpn_positive_fraction,
        box_roi_pool=roi_pool,
        box_head=box_head,
        box_predictor=predictor,
        box_batch_size_per_image=s.rois_per_image,
        box_positive_fraction=s.roi_positive_fraction,
    )


def _stages(model: nn.Module, torchvision: bool) -> dict[str, list[nn.Module]]:
    heads = model.roi_heads
    if torchvision:
        pool, head = heads.box_roi_pool, [heads.box_head, heads.box_predictor]
    else:
        pool, head = heads.pooler, [heads.box_head, heads.predictor]
    return {
        "transform": [model.transform],
        "backbone": [model.backbone],
        "rpn": [model.rpn],
        ROI_HEADS_REST: [heads],  # minus the two stages nested in it
        "roi_pool": [pool],
        "box_head": head,
    }


def _pair(name: str, description: str, s: Settings, ours: FasterRCNN, theirs: TVFasterRCNN) -> Pair:
    ours, theirs = ours.to(s.device), theirs.to(s.device)
    return Pair(name, description, s, ours, theirs, _stages(ours, False), _stages(theirs, True))


def build_resnet50_c4(s: Settings) -> Pair:
    """ResNet-50 C4: layer1-3 trunk (stride 16, 1024 ch), RoIAlign 14x14 (sampling 2, legacy
    alignment), layer4 + average pool as the box head (2048 features), as torchvision's and
    Detectron's C4 models. No pretrained weights offline: BatchNorm calibrated, then frozen.

    16 RoIs per image and 50 test proposals, not the seed's 64 / 300: the layer4 head costs
    1.6 GFLOP per RoI, so the seed's values take ~40 s per step on a 2-core CPU."""
    s = s.resolve(image_size=384, rois_per_image=16, test_proposals=50)
    backbone = build_backbone("resnet50", trainable_layers=3, frozen_bn=False)  # stem + layer1 frozen
    calibrate_batchnorm(backbone, s.image_size)
    pooler = RoIPooler("roi_align", output_size=14, sampling_ratio=2, aligned=False)
    ours = _ours(backbone, s, pooler, ResNetC5Head)
    c5 = copy.deepcopy(ours.roi_heads.box_head.c5)
    box_head = nn.Sequential(c5, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    roi_pool = MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2)
    theirs = _theirs(ours, s, roi_pool, box_head, ours.roi_heads.box_head.out_features)
    description = (
        "ResNet-50 C4: trunk to layer3 (stride 16, 1024 ch, stem + layer1 frozen, random weights with calibrated "
        f"BatchNorm), RoIAlign 14x14 (sampling 2, aligned=False), layer4 + average pool head; {s.describe()}"
    )
    return _pair("resnet50_c4", description, s, ours, theirs)


def build_mobilenet_v2(s: Settings) -> Pair:
    """MobileNetV2 features (1280 ch, stride 32), RoIAlign 7x7 (sampling 2), two-layer MLP head 1024
    wide: torchvision's documented FasterRCNN-on-MobileNetV2 example, with the issue's 64 RoIs per image."""
    s = s.resolve(image_size=384, rois_per_image=64, test_proposals=300)
    if MOBILENET_WEIGHTS.is_file():
        backbone = build_backbone("mobilenet_v2_full", weights_path=MOBILENET_WEIGHTS)
    else:
        backbone = build_backbone("mobilenet_v2_full", frozen_bn=False)
        calibrate_batchnorm(backbone, s.image_size)
    pooler = RoIPooler("roi_align", output_size=7, sampling_ratio=2, aligned=False)
    ours = _ours(backbone, s, pooler, partial(FCHead, hidden_dim=1024))
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, 1024)
    box_head.fc6.load_state_dict(ours.roi_heads.box_head.fc1.state_dict())
    box_head.fc7.load_state_dict(ours.roi_heads.box_head.fc2.state_dict())
    roi_pool = MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2)
    theirs = _theirs(ours, s, roi_pool, box_head, 1024)
    weights = "ImageNet weights (int8-derived)" if MOBILENET_WEIGHTS.is_file() else "random weights"
    description = (
        f"MobileNetV2 features (1280 ch, stride 32, {weights}, stride <= 4 frozen), RoIAlign 7x7 (sampling 2, "
        f"aligned=False), two-layer MLP head 1024 wide; {s.describe()}"
    )
    return _pair("mobilenet_v2", description, s, ours, theirs)


def build_resnet50_fpn(s: Settings) -> Pair:
    """torchvision's fasterrcnn_resnet50_fpn at a small size: ResNet-50 + FPN (256 ch, levels at
    strides 4..64), one anchor size per level, RoIAlign 7x7 by box size over levels "0".."3",
    two-layer MLP head 1024 wide; pre-NMS top-n per level as torchvision's (2000 / 1000). Our
    side is ``FPNBackbone`` + ``MultiLevelRoIPooler`` (conf/model/faster_rcnn_fpn.yaml)."""
    s = s.resolve(
        image_size=256,
        rois_per_image=64,
        test_proposals=300,
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        pre_nms_top_n=(2000, 1000),
    )
    backbone = build_fpn_backbone(
        "resnet50_fpn", trainable_layers=3, frozen_bn=False
    )  # conv1 + layer1 frozen
    calibrate_batchnorm(backbone, s.image_size)
    pooler = MultiLevelRoIPooler("roi_align", output_size=7, sampling_ratio=2, aligned=False)
    ours = _ours(backbone, s, pooler, partial(FCHead, hidden_dim=1024))
    box_head = TwoMLPHead(backbone.out_channels * 7 * 7, 1024)
    box_head.fc6.load_state_dict(ours.roi_heads.box_head.fc1.state_dict())
    box_head.fc7.load_state_dict(ours.roi_heads.box_head.fc2.state_dict())
    roi_pool = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
    theirs = _theirs(ours, s, roi_pool, box_head, 1024, backbone=copy.deepcopy(ours.backbone))
    description = (
        "ResNet-50-FPN as torchvision's fasterrcnn_resnet50_fpn (random weights with calibrated BatchNorm, "
        f"conv1 + layer1 frozen), RoIAlign 7x7 over 4 levels, two-layer MLP head 1024 wide; {s.describe()}"
    )
    return _pair("resnet50_fpn", description, s, ours, theirs)


CONFIGS: dict[str, Callable[[Settings], Pair]] = {
    "resnet50_c4": build_resnet50_c4,
    "mobilenet_v2": build_mobilenet_v2,
    "resnet50_fpn": build_resnet50_fpn,
}


# --------------------------------------------------------------------------- data


def synthetic_image(size: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """-> image (3, size, size) in [0, 1], boxes (G, 4) xyxy pixels, labels (G,) in 1..K; G in 3..5.

    Each box is a filled rectangle of its own colour on a smooth gradient, so the backbone sees
    edges where the boxes are."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    image = 0.3 + 0.4 * (torch.rand(3, 1, 1, generator=g) * ramp[None, :, None] + 0.2 * ramp[None, None, :])
    image = image.expand(3, size, size).clone()
    num = int(torch.randint(3, 6, (), generator=g))
    wh = (0.1 + 0.4 * torch.rand(num, 2, generator=g)) * size
    xy = torch.rand(num, 2, generator=g) * (size - wh)
    boxes = torch.cat([xy, xy + wh], dim=1).round()
    for x1, y1, x2, y2 in boxes.long().tolist():
        image[:, y1:y2, x1:x2] = torch.rand(3, 1, 1, generator=g)
    image += 0.02 * torch.randn(image.shape, generator=g)
    labels = torch.randint(1, NUM_CLASSES + 1, (num,), generator=g)
    return image.clamp(0, 1), boxes, labels


def batch(size: int, step: int, device: torch.device) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """The seeded batch of step ``step``: the same for both models."""
    images, targets = [], []
    for i in range(IMAGES_PER_STEP):
        image, boxes, labels = synthetic_image(size, 1000 + IMAGES_PER_STEP * step + i)
        images.append(image.to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device)})
    return images, targets


# --------------------------------------------------------------------------- steps


class Contender:
    """A model with its training step (forward, backward, SGD) and its inference step."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        stages: dict[str, list[nn.Module]],
        device: torch.device,
        infer_model: nn.Module | None = None,
    ) -> None:
        self.name = name
        self.model = model
        # Inference runs this one: ours rewritten by frcnn.inference (BatchNorm folded, channels-last)
        self.infer_model = infer_model if infer_model is not None else model
        self.stages = stages
        self.clock = StageClock(device)
        self.torchvision = isinstance(model, TVFasterRCNN)
        params = [p for p in model.parameters() if p.requires_grad]
        # lr 0: the update arithmetic runs, the weights (hence the work) stay the same; no weight
        # decay, whose temporary copy of every gradient would set the step's memory peak for both
        self.optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)

    def train_step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        self.model.train()
        out = self.model(images, targets)
        loss = sum(out.values()) if self.torchvision else out.losses["loss"]
        with phase(BACKWARD, self.clock):
            loss.backward()
        with phase(OPTIMIZER, self.clock):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self, images: list[Tensor]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """-> (proposals per image (P_i, 4), detections per image)."""
        model = self.infer_model.eval()
        captured: list[list[Tensor]] = []

        def keep_proposals(module, args, output) -> None:  # returns None: leaves the output alone
            captured.append(output[0])

        handle = model.rpn.register_forward_hook(keep_proposals)
        try:
            with torch.inference_mode():
                out = model(images)
        finally:
            handle.remove()
        # RPN proposals are in the model's input pixels for both (the resize is a no-op here)
        return captured[0], (out if self.torchvision else out.detections)


def _nearest(mine: Tensor, theirs: Tensor, my_labels=None, their_labels=None) -> tuple[Tensor, Tensor]:
    """boxes (A, 4), (B, 4) -> for each of mine, the max-coordinate distance to the nearest of theirs
    (of the same label when given) (A,), and that box's index (A,)."""
    if len(mine) == 0 or len(theirs) == 0:
        return mine.new_full((len(mine),), float("inf")), torch.zeros(len(mine), dtype=torch.long)
    distance = (mine[:, None] - theirs[None]).abs().amax(-1)  # (A, B)
    if my_labels is not None:
        distance = distance.masked_fill(my_labels[:, None] != their_labels[None], float("inf"))
    return distance.min(dim=1)


def agreement(ours: tuple, theirs: tuple) -> str:
    """How far apart the two models' proposals and detections are on the same batch.

    Matched by position, not by rank: float rounding reorders near-tied scores, so the k-th box of
    one list need not be the k-th of the other. Each of our boxes is paired with the nearest of
    torchvision's (detections: of the same class); a box at a top-k cut-off can have no partner.
    """
    (my_props, my_dets), (tv_props, tv_dets) = ours, theirs
    p_counts = [(len(a), len(b)) for a, b in zip(my_props, tv_props)]
    p_gaps = torch.cat([_nearest(a, b)[0] for a, b in zip(my_props, tv_props)])
    d_counts = [(len(a["boxes"]), len(b["boxes"])) for a, b in zip(my_dets, tv_dets)]
    d_gaps, s_gaps = [], []
    for a, b in zip(my_dets, tv_dets):
        gap, index = _nearest(a["boxes"], b["boxes"], a["labels"], b["labels"])
        d_gaps.append(gap)
        s_gaps.append((a["scores"] - b["scores"][index]).abs() if len(b["scores"]) else gap)
    d_gaps, s_gaps = torch.cat(d_gaps), torch.cat(s_gaps)

    def share(gaps: Tensor, tol: float = 0.01) -> str:
        return f"{int((gaps <= tol).sum())} / {len(gaps)} within {tol} px"

    close = d_gaps <= 0.01
    score = float(s_gaps[close].max()) if close.any() else float("nan")
    return (
        f"proposals per image (ours, torchvision) {p_counts}: {share(p_gaps)} of one of torchvision's; "
        f"detections {d_counts}: {share(d_gaps)} of a torchvision detection of the same class, "
        f"max |score diff| of those pairs {score:.2g}"
    )


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """-> (FLOPs that ``fn()`` ran, its result)."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


@dataclass
class Result:
    """What one model measured in one configuration; times in seconds per step."""

    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    train_cpu_s: list[float] = field(default_factory=list)  # process CPU time (all threads)
    infer_cpu_s: list[float] = field(default_factory=list)
    train_stages: list[dict[str, float]] = field(default_factory=list)  # StageClock seconds per step
    infer_stages: list[dict[str, float]] = field(default_factory=list)
    train_flops: int = 0
    infer_flops: int = 0
    train_profile: StepProfile | None = None
    infer_profile: StepProfile | None = None


def run_config(
    pair: Pair, steps: int, warmup: int, gemm: GemmRate, inference_rewrite: bool
) -> tuple[dict, list[float], str]:
    """Warm-up (the first step counts FLOPs and compares outputs, the last is profiled), then
    ``steps`` timed rounds, interleaved. -> ({model: Result}, GEMM FLOP/s per round, agreement).

    inference_rewrite: ours infers with ``optimize_for_inference`` applied to a copy (what eval.py
    and predict.py run); the training model is untouched (lr 0 keeps the two equal)."""
    ours_infer = optimize_for_inference(copy.deepcopy(pair.ours)) if inference_rewrite else None
    contenders = [
        Contender("ours", pair.ours, pair.ours_stages, pair.settings.device, ours_infer),
        Contender("torchvision", pair.theirs, pair.theirs_stages, pair.settings.device),
    ]
    results = {c.name: Result() for c in contenders}
    with contextlib.ExitStack() as hooks:
        for c in contenders:
            hooks.enter_context(stage_hooks(c.stages, c.clock))
        if ours_infer is not None:
            hooks.enter_context(stage_hooks(_stages(ours_infer, False), contenders[0].clock))
        check = _warm_up(contenders, results, warmup, pair.settings)
        gemm_rates = [_timed_round(contenders, results, i, warmup, pair.settings, gemm) for i in range(steps)]
    return results, gemm_rates, check


def _warm_up(contenders: list[Contender], results: dict[str, Result], warmup: int, s: Settings) -> str:
    """Untimed rounds: the first counts FLOPs and compares outputs, the last is profiled."""
    outputs = {}
    for i in range(warmup):
        images, targets = batch(s.image_size, i, s.device)
        for c in contenders:
            r = results[c.name]
            train, infer = partial(c.train_step, images, targets), partial(c.infer_step, images)
            if i == 0:
                r.train_flops, _ = count_flops(train)
                r.infer_flops, outputs[c.name] = count_flops(infer)
            elif i == warmup - 1:
                r.train_profile = profile_step(train, s.device)
                r.infer_profile = profile_step(infer, s.device)
            else:
                train()
                infer()
        print(f"  warm-up round {i} done", flush=True)
    check = agreement(outputs["ours"], outputs["torchvision"])
    print(f"  agreement: {check}", flush=True)
    return check


def _timed_round(
    contenders: list[Contender], results: dict[str, Result], i: int, warmup: int, s: Settings, gemm: GemmRate
) -> float:
    """Both models train, then both infer (who goes first alternates); then the GEMM rate."""
    images, targets = batch(s.image_size, warmup + i, s.device)
    order = contenders if i % 2 == 0 else contenders[::-1]
    for kind in ("train", "infer"):
        for c in order:
            step = (
                partial(c.train_step, images, targets) if kind == "train" else partial(c.infer_step, images)
            )
            c.clock.reset()
            wall, cpu = timed(step, s.device)
            r = results[c.name]
            getattr(r, f"{kind}_s").append(wall)
            getattr(r, f"{kind}_cpu_s").append(cpu)
            stages = dict(c.clock.totals)
            if stages:  # the clock runs on the CPU only
                stages["other"] = wall - sum(stages.values())  # outside every stage
            getattr(r, f"{kind}_stages").append(stages)
    rate = gemm.measure()
    print(
        f"  round {i}: "
        + ", ".join(
            f"{c.name} train {results[c.name].train_s[-1]:.2f} s, infer {results[c.name].infer_s[-1]:.2f} s"
            for c in contenders
        )
        + f"; GEMM {rate / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    return rate


# --------------------------------------------------------------------------- report


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    value = round(value, 3)  # as shown
    met = value >= target if higher_is_better else value <= target
    return f"{'>=' if higher_is_better else '<='} {target} | {'met' if met else 'missed'}"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def report(
    name: str,
    description: str,
    results: dict[str, Result],
    gemm_rates: list[float],
    check: str,
    inference_rewrite: bool,
) -> str:
    """The markdown of one configuration: speed, memory, FLOPs, ratios with targets, stages, ops."""
    gemm = statistics.median(gemm_rates)
    lines = [
        f"### {name}",
        "",
        f"{description}.",
        f"Agreement on one batch in inference: {check}.",
        "",
        "| model | train s/step median [min, max] | train img/s | infer s/step median [min, max] | infer img/s "
        "| CPU s/step train / infer | peak MB train / infer | GFLOP/step train / infer | % of GEMM rate train / infer |",
        "| --- | --- | ---: | --- | ---: | --- | --- | --- | --- |",
    ]
    for model, r in results.items():
        train, infer = statistics.median(r.train_s), statistics.median(r.infer_s)
        peaks = [p.peak_bytes for p in (r.train_profile, r.infer_profile)]
        lines.append(
            f"| {model} | {_spread(r.train_s)} | {IMAGES_PER_STEP / train:.3f} | {_spread(r.infer_s)} "
            f"| {IMAGES_PER_STEP / infer:.3f} "
            f"| {statistics.median(r.train_cpu_s):.2f} / {statistics.median(r.infer_cpu_s):.2f} "
            f"| {' / '.join('n/a' if p is None else f'{p / 2**20:.0f}' for p in peaks)} "
            f"| {r.train_flops / 1e9:.1f} / {r.infer_flops / 1e9:.1f} "
            f"| {100 * r.train_flops / train / gemm:.0f} % / {100 * r.infer_flops / infer / gemm:.0f} % |"
        )
    o, t = results["ours"], results["torchvision"]

    def speed(kind: str, pick: Callable[[list[float]], float]) -> float:  # ours img/s over theirs
        return pick(getattr(t, kind)) / pick(getattr(o, kind))

    lines += [
        "",
        f"GEMM rate: {gemm / 1e9:.1f} GFLOP/s, median of {len(gemm_rates)} large float32 matmuls, one per round "
        f"[{min(gemm_rates) / 1e9:.1f}, {max(gemm_rates) / 1e9:.1f}].",
        "",
        "| ours / torchvision | by median wall time | by min wall time | by median CPU time | target | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    med = statistics.median
    for label, kind, target in (
        ("training images/s", "train", "train"),
        ("inference images/s", "infer", "infer"),
    ):
        value = speed(f"{kind}_s", med)
        lines.append(
            f"| {label} | {value:.3f} | {speed(f'{kind}_s', min):.3f} | {speed(f'{kind}_cpu_s', med):.3f} "
            f"| {_verdict(value, TARGETS[target], True)} |"
        )
    for label, kind in (("peak memory, training", "train"), ("peak memory, inference", "infer")):
        mine, theirs = getattr(o, f"{kind}_profile").peak_bytes, getattr(t, f"{kind}_profile").peak_bytes
        if mine is not None and theirs:
            lines.append(
                f"| {label} | {mine / theirs:.3f} | | | {_verdict(mine / theirs, TARGETS['memory'], False)} |"
            )
    if name.startswith("resnet50"):
        share = o.train_flops / med(o.train_s) / gemm
        lines.append(
            f"| ours: training FLOP/s / GEMM FLOP/s | {share:.3f} | {o.train_flops / min(o.train_s) / gemm:.3f} | "
            f"| {_verdict(share, TARGETS['gemm_share_r50'], True)} |"
        )
    noise = []
    kinds = (("train", "training"),) if inference_rewrite else (("train", "training"), ("infer", "inference"))
    for kind, label in kinds:  # rewritten for inference, our backbone is no longer the same module
        mine, theirs = (
            statistics.median(s.get("backbone", 0.0) for s in getattr(r, f"{kind}_stages")) for r in (o, t)
        )
        if mine and theirs:
            noise.append(f"{mine / theirs:.2f} in {label}")
    if noise:
        lines += [
            "",
            "Noise check: the backbone forward (the same module on the same input in both) took ours / "
            f"torchvision = {' and '.join(noise)} (medians over the timed steps; 1.00 on a quiet machine).",
        ]
    lines += ["", *stage_table(results), "", *top_ops_table(results)]
    return "\n".join(lines)


STAGE_ORDER = ["transform", "backbone", "rpn", "roi_pool", "box_head", ROI_HEADS_REST]


def stage_times(r: Result, kind: str) -> tuple[dict[str, float], float]:
    """-> (ms per stage, ms per step) of one model and mode.

    Forward stages, backward, optimizer and "other" (the step outside every stage): medians over the
    timed steps (StageClock), so they need not add up to the median step exactly; backward is split
    across stages in the proportions of the profiled step. Without clock readings (CUDA): the
    profiled step alone.
    """
    profile = getattr(r, f"{kind}_profile")
    clocks = getattr(r, f"{kind}_stages")
    if not any(clocks):
        return dict(profile.stages_ms), profile.wall_ms
    step_ms = 1000 * statistics.median(getattr(r, f"{kind}_s"))
    names = {n for c in clocks for n in c}
    stages = {n: 1000 * statistics.median([c.get(n, 0.0) for c in clocks]) for n in names}
    backward = stages.pop(BACKWARD, 0.0)
    split = {n: v for n, v in profile.stages_ms.items() if n.startswith("bwd ")}
    for n, v in split.items():
        stages[n] = backward * v / (sum(split.values()) or 1.0)
    return stages, step_ms


def stage_table(results: dict[str, Result]) -> list[str]:
    """ms (share of the step) per stage, both models, training and inference."""
    columns = [(m, kind, *stage_times(r, kind)) for m, r in results.items() for kind in ("train", "infer")]
    names: list[str] = []
    for *_, stages, _ in columns:
        names += [n for n in stages if n not in names]

    def rank(n: str) -> tuple:
        base = n.removeprefix("bwd ")
        order = STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER)
        return (n.startswith("bwd "), n == OPTIMIZER, n == "other", order)

    names.sort(key=rank)
    lines = [
        "| stage: ms (% of step) | " + " | ".join(f"{m} {k}" for m, k, *_ in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for n in names:
        cells = [
            f"{stages[n]:.0f} ({100 * stages[n] / step:.0f} %)" if n in stages else ""
            for *_, stages, step in columns
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{step:.0f}**" for *_, step in columns) + " |")
    return lines


def top_ops_table(results: dict[str, Result]) -> list[str]:
    lines = [
        "| heaviest ops of the profiled training step (self time, input shapes) | ms | % of that step |",
        "| --- | ---: | ---: |",
    ]
    for model, r in results.items():
        p = r.train_profile
        lines += [f"| {model}: `{op}` | {ms:.0f} | {100 * ms / p.wall_ms:.0f} % |" for op, ms in p.top_ops]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument(
        "--steps", type=int, default=3, help="timed rounds (each: both models, train + infer)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed rounds (>= 2): the first counts FLOPs, the last is profiled",
    )
    parser.add_argument(
        "--image-size", type=int, help="side of the square input images (default: per config)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--rois-per-image", type=int, help="R-CNN training RoIs per image (default: per config)"
    )
    parser.add_argument(
        "--test-proposals", type=int, help="RPN proposals per image at test (default: per config)"
    )
    parser.add_argument("--record", action="store_true", help="write the tables into bench/README.md")
    parser.add_argument(
        "--no-inference-rewrite",
        dest="inference_rewrite",
        action="store_false",
        help="ours infers with the training model as is (default: BatchNorm folded + channels-last, "
        "frcnn.inference, as eval.py and predict.py run it)",
    )
    args = parser.parse_args(argv)
    if args.warmup < 2 or args.steps < 1:
        parser.error("need --warmup >= 2 and --steps >= 1")
    device = torch.device(args.device)
    torch.manual_seed(0)
    settings = Settings(args.image_size, device, args.rois_per_image, args.test_proposals)
    gemm = GemmRate(device)

    sections = []
    start = time.perf_counter()
    for name in args.configs:
        print(f"{name}: building", flush=True)
        pair = CONFIGS[name](settings)
        results, gemm_rates, check = run_config(pair, args.steps, args.warmup, gemm, args.inference_rewrite)
        sections.append(report(name, pair.description, results, gemm_rates, check, args.inference_rewrite))
        print("\n" + sections[-1] + "\n", flush=True)
        del pair, results

    elapsed = time.perf_counter() - start
    command = " ".join([".venv/bin/python", *sys.argv])
    shared = ", shared with other jobs: timings are noisy, hence interleaved rounds, medians and the CPU-time cross-check"
    markdown = "\n".join(
        [
            SECTION,
            "",
            f"{datetime.date.today().isoformat()}, `{command}`, {machine(device)}"
            + (shared if device.type == "cpu" else "")
            + ".",
            "",
            f"Both models: {IMAGES_PER_STEP} seeded synthetic square images per step "
            f"(3-5 boxes each, {NUM_CLASSES} classes), frozen BatchNorm, the same weights; anchors "
            f"{Settings.anchor_sizes} x {Settings.aspect_ratios} (FPN: one size per level); RPN 256 anchors at "
            "50 % positive, IoU 0.5 / 0.1, 2000 proposals kept in training, NMS 0.6; R-CNN 25 % positive, IoU 0.5; "
            "score 0.05, NMS 0.5, 100 detections. Training step = forward + backward + SGD; inference = forward "
            "under inference_mode"
            + (
                ", ours with the inference rewrite of eval.py / predict.py (`frcnn.inference`: BatchNorm folded "
                "into the convolutions, channels-last weights) on a copy of the same weights"
                if args.inference_rewrite
                else ", ours without the inference rewrite (--no-inference-rewrite)"
            )
            + ". Each round runs ours and torchvision alternately first. Peak MB: live bytes "
            "above the step's start (CPU: the profiler's allocator records; CUDA: max_memory_allocated). FLOPs: "
            "FlopCounterMode (matmuls and convolutions; RoIAlign, NMS and elementwise ops are not counted), "
            "over the median step time and the GEMM rate of the same rounds. Stage times: medians over the "
            "timed steps of clocks started and stopped by forward hooks; backward is one interval there, split "
            "across stages in the proportions of one profiled step (each backward op goes to the stage whose "
            "forward op it differentiates); `sample/loss/postprocess` is the rest of the RoI heads (matching, "
            "sampling, losses, detections). The heaviest ops come from that profiled step. The backbone "
            "forward is the same module on the same input in both models (in training; in inference too without "
            "the rewrite), so its ours / torchvision ratio (printed per configuration) shows the noise. "
            f"The whole run took {elapsed / 60:.1f} min. "
            "RoIAlign alone, ours against torchvision's and a proposed replacement: `bench/roi_align_variants.py`.",
            "",
            "\n\n".join(sections),
            "",
        ]
    )
    if args.record:
        record(SECTION, markdown)


if __name__ == "__main__":
    main()
