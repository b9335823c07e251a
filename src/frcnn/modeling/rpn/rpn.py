"""Region Proposal Network: objectness and box deltas for every anchor, then proposals.

Shape shorthand:
    N: images in the batch;  C: feature channels;  L: feature levels (1 for the seed's single map);
    A: anchors per location;  M_l anchors of level l;  M = sum of M_l anchors per image;
    P_i: proposals of image i after NMS (<= post_nms_top_n).
Naming: ``pred_objectness_logits`` (N, M), ``pred_anchor_deltas`` (N, M, 4); targets and losses
in ``frcnn.modeling.rpn.losses``, proposal selection in ``frcnn.modeling.rpn.proposals``.
Levels are concatenated finest first, as torchvision does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from frcnn.modeling.anchors import AnchorGenerator
from frcnn.modeling.boxes import BoxCoder
from frcnn.modeling.matcher import Matcher
from frcnn.modeling.rpn.head import RPNHead
from frcnn.modeling.rpn.losses import rpn_losses, rpn_targets
from frcnn.modeling.rpn.proposals import Proposals, select_proposals

# What a backbone returns: one map, or several (an FPN's ``{"0": ..., "pool": ...}``), finest first.
Features = Tensor | Mapping[str, Tensor] | Sequence[Tensor]


def feature_levels(features: Features) -> list[Tensor]:
    """One map -> [map]; a mapping or sequence of maps -> its maps in order (finest first)."""
    if isinstance(features, Tensor):
        return [features]
    return list(features.values()) if isinstance(features, Mapping) else list(features)


@dataclass
class RPNOutput:
    """The RPN's proposals (detached, best first, in the resized image's pixels) and, when targets
    were given, ``loss_rpn_cls`` and ``loss_rpn_reg``."""

    proposals: Proposals
    losses: dict[str, Tensor] = field(default_factory=dict)


class RegionProposalNetwork(nn.Module):
    """Anchors + RPN head + targets + losses + proposal selection.

    Args:
        in_channels: channels of the backbone's feature map(s) (the detector fills it in).
        anchor_generator, box_coder, matcher: collaborators (seed defaults: 64..512 x {0.5, 1, 2};
            weights (1, 1, 1, 1); fg IoU >= 0.5, bg < 0.1, best-anchor fallback).
        conv_channels: width of the 3x3 conv (the seed: 512).
        batch_size_per_image, positive_fraction: the balanced mini-batch (the seed: 256 at 50 %).
        pre_nms_top_n, post_nms_top_n: ``{"train": ..., "test": ...}`` proposal counts before NMS
            (per feature level) and after NMS (per image) (the seed: 2000 kept in training, far
            fewer - 300 - at test time).
        nms_threshold: IoU above which a lower-scoring proposal is dropped (the seed: 0.6).
        min_box_size: proposals narrower or shorter than this many pixels are dropped.
        score_threshold: proposals whose objectness probability is below this are dropped
            (torchvision's ``rpn_score_thresh``; 0 keeps all).
        smooth_l1_beta: see ``frcnn.modeling.losses.box_regression_loss``.
        generator: optional seeded ``torch.Generator`` for the sampling (reproducible runs).
    """

    def __init__(
        self,
        in_channels: int,
        anchor_generator: AnchorGenerator | None = None,
        box_coder: BoxCoder | None = None,
        matcher: Matcher | None = None,
        conv_channels: int = 512,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n: Mapping[str, int] = {"train": 12000, "test": 6000},  # noqa: B006 (read-only)
        post_nms_top_n: Mapping[str, int] = {"train": 2000, "test": 300},  # noqa: B006
        nms_threshold: float = 0.6,
        min_box_size: float = 1e-3,
        smooth_l1_beta: float = 1.0 / 9.0,
        generator: torch.Generator | None = None,
        score_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator or AnchorGenerator()
        self.box_coder = box_coder or BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = matcher or Matcher(0.5, 0.1, 0.0, allow_low_quality_matches=True)
        self.head = RPNHead(in_channels, self.anchor_generator.num_anchors_per_location, conv_channels)
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.pre_nms_top_n = dict(pre_nms_top_n)
        self.post_nms_top_n = dict(post_nms_top_n)
        self.nms_threshold = nms_threshold
        self.min_box_size = min_box_size
        self.score_threshold = score_threshold
        self.smooth_l1_beta = smooth_l1_beta
        self.generator = generator

    def forward(
        self,
        features: Features,
        image_sizes: Sequence[tuple[int, int]],
        padded_size: tuple[int, int],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> RPNOutput:
        """features (N, C, Hf, Wf), or L such maps (finest first), of a padded batch of size
        ``padded_size`` (H, W); ``image_sizes``: (h, w) of each resized image inside it; targets in
        those resized images' pixels. Losses only when targets are given.
        """
        maps = feature_levels(features)
        sampled = self.batch_size_per_image if targets is not None else None  # what the losses will read
        pred_objectness_logits, pred_anchor_deltas = self.head.predict_levels(maps, sampled)  # (N, M), (N, M, 4)
        anchors_per_level = self.anchor_generator(maps, padded_size)  # L x (M_l, 4)
        anchors = torch.cat(anchors_per_level)  # (M, 4)
        mode = "train" if self.training else "test"
        proposals = select_proposals(
            anchors,
            pred_objectness_logits.detach(),
            pred_anchor_deltas.detach(),
            image_sizes,
            [a.shape[0] for a in anchors_per_level],
            self.box_coder,
            self.pre_nms_top_n[mode],
            self.post_nms_top_n[mode],
            self.nms_threshold,
            self.min_box_size,
            self.score_threshold,
        )
        if targets is None:
            return RPNOutput(proposals)
        gt_labels, gt_deltas = rpn_targets(anchors, [t["boxes"] for t in targets], self.matcher, self.box_coder)
        losses = rpn_losses(
            pred_objectness_logits,
            pred_anchor_deltas,
            gt_labels,
            gt_deltas,
            self.batch_size_per_image,
            self.positive_fraction,
            self.smooth_l1_beta,
            self.generator,
        )
        return RPNOutput(proposals, losses)
