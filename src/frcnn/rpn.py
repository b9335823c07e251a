"""Region Proposal Network: objectness and box deltas for every anchor, then proposals.

Shape shorthand:
    N: images in the batch;  C: feature channels;  L: feature levels (1 for the seed's single map);
    Hl, Wl: size of level l's map;  A: anchors per location;  M_l = Hl * Wl * A anchors of level l;
    M = sum of M_l anchors per image;  G: ground-truth boxes;  P: proposals per image after NMS
    (<= post_nms_top_n).
Naming: ``pred_objectness_logits`` (N, M), ``pred_anchor_deltas`` (N, M, 4), ``gt_labels`` (N, M)
in {1, 0, -1}, ``gt_deltas`` (N, M, 4). Levels are concatenated finest first, as torchvision does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou

from frcnn.anchors import AnchorGenerator
from frcnn.boxes import BoxCoder, clip_boxes
from frcnn.losses import box_regression_loss, rpn_objectness_loss
from frcnn.matcher import FOREGROUND, Matcher
from frcnn.sampler import subsample_labels

# What a backbone returns: one map, or several (an FPN's ``{"0": ..., "pool": ...}``), finest first.
Features = Tensor | Mapping[str, Tensor] | Sequence[Tensor]


def feature_levels(features: Features) -> list[Tensor]:
    """One map -> [map]; a mapping or sequence of maps -> its maps in order (finest first)."""
    if isinstance(features, Tensor):
        return [features]
    return list(features.values()) if isinstance(features, Mapping) else list(features)


class RPNHead(nn.Module):
    """The seed's RPN head: 3x3 conv (512 channels) + ReLU, then 1x1 objectness and 1x1 deltas.

    One objectness logit per anchor with a sigmoid (equivalent to the seed's two-way softmax for
    two classes, with half the parameters). With a feature pyramid the same head runs on every
    level (torchvision's ``RPNHead``: ``conv.0.0`` / ``cls_logits`` / ``bbox_pred`` are ``conv`` /
    ``objectness`` / ``deltas`` here).
    """

    def __init__(self, in_channels: int, num_anchors: int, conv_channels: int = 512) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, conv_channels, kernel_size=3, padding=1)
        self.objectness = nn.Conv2d(conv_channels, num_anchors, kernel_size=1)
        self.deltas = nn.Conv2d(conv_channels, num_anchors * 4, kernel_size=1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (N, C, Hf, Wf) -> (objectness logits (N, A, Hf, Wf), deltas (N, A*4, Hf, Wf))."""
        x = F.relu(self.conv(features))
        return self.objectness(x), self.deltas(x)


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
        smooth_l1_beta: see ``frcnn.losses.box_regression_loss``.
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

    def _mode(self) -> str:
        return "train" if self.training else "test"

    def forward(
        self,
        features: Features,
        image_sizes: Sequence[tuple[int, int]],
        padded_size: tuple[int, int],
        targets: Sequence[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], list[Tensor], dict[str, Tensor]]:
        """features (N, C, Hf, Wf), or L such maps (finest first), of a padded batch of size
        ``padded_size`` (H, W); ``image_sizes``: (h, w) of each resized image inside it; targets in
        those resized images' pixels.

        Returns proposals per image (P_i, 4) sorted by objectness, their objectness logits (P_i,),
        and the losses ``loss_rpn_cls`` / ``loss_rpn_reg`` when targets are given.
        Proposals are detached: the R-CNN's loss does not flow back into the box coordinates (the
        approximate joint training of the paper's end-to-end recipe).
        """
        maps = feature_levels(features)
        logits_per_level, deltas_per_level = [], []
        for feature_map in maps:  # the shared head on every level
            N, _, Hl, Wl = feature_map.shape
            pred_logits, pred_deltas = self.head(feature_map)  # (N, A, Hl, Wl), (N, A*4, Hl, Wl)
            A = pred_logits.shape[1]
            logits_per_level.append(pred_logits.permute(0, 2, 3, 1).reshape(N, -1))  # (N, A, Hl, Wl) -> (N, M_l)
            # (N, A*4, Hl, Wl) -> (N, A, 4, Hl, Wl) -> (N, Hl, Wl, A, 4) -> (N, M_l, 4)
            deltas_per_level.append(pred_deltas.view(N, A, 4, Hl, Wl).permute(0, 3, 4, 1, 2).reshape(N, -1, 4))
        anchors_per_level = self.anchor_generator(maps, padded_size)  # L x (M_l, 4)
        num_anchors_per_level = [a.shape[0] for a in anchors_per_level]
        anchors = torch.cat(anchors_per_level)  # (M, 4)
        pred_objectness_logits = torch.cat(logits_per_level, dim=1)  # (N, M)
        pred_anchor_deltas = torch.cat(deltas_per_level, dim=1)  # (N, M, 4)

        proposals, proposal_logits = self.select_proposals(
            anchors,
            pred_objectness_logits.detach(),
            pred_anchor_deltas.detach(),
            image_sizes,
            num_anchors_per_level,
        )
        losses: dict[str, Tensor] = {}
        if targets is not None:
            gt_labels, gt_deltas = self.label_and_encode(anchors, [t["boxes"] for t in targets])
            losses = self.losses(pred_objectness_logits, pred_anchor_deltas, gt_labels, gt_deltas)
        return proposals, proposal_logits, losses

    @torch.no_grad()
    def label_and_encode(self, anchors: Tensor, gt_boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """anchors (M, 4), gt boxes per image (G_i, 4) -> gt_labels (N, M) int8, gt_deltas (N, M, 4).

        IoU is computed per image (ground-truth counts differ), then padded to (N, Gmax, M) with -1
        so the matcher runs once over the whole batch.
        """
        N, M = len(gt_boxes), anchors.shape[0]
        G = max((b.shape[0] for b in gt_boxes), default=0)
        iou = anchors.new_full((N, G, M), -1.0)
        padded_gt = anchors.new_zeros((N, max(G, 1), 4))
        for i, boxes in enumerate(gt_boxes):  # a loop over images, not boxes
            if boxes.numel():
                iou[i, : boxes.shape[0]] = box_iou(boxes, anchors)
                padded_gt[i, : boxes.shape[0]] = boxes
        matched, gt_labels = self.matcher(iou)  # (N, M), (N, M)
        matched_boxes = padded_gt.gather(1, matched[..., None].expand(N, M, 4))  # (N, M, 4)
        gt_deltas = self.box_coder.encode(
            anchors.repeat(N, 1), matched_boxes.reshape(-1, 4)
        ).reshape(N, M, 4)
        return gt_labels, gt_deltas

    def losses(
        self, pred_objectness_logits: Tensor, pred_anchor_deltas: Tensor, gt_labels: Tensor, gt_deltas: Tensor
    ) -> dict[str, Tensor]:
        """(N, M), (N, M, 4), (N, M), (N, M, 4) -> {loss_rpn_cls, loss_rpn_reg} on a balanced sample."""
        sampled = subsample_labels(gt_labels, self.batch_size_per_image, self.positive_fraction, self.generator)
        foreground = sampled & (gt_labels == FOREGROUND)
        num_sampled = int(sampled.sum())
        return {
            "loss_rpn_cls": rpn_objectness_loss(pred_objectness_logits[sampled], gt_labels[sampled]),
            "loss_rpn_reg": box_regression_loss(
                pred_anchor_deltas[foreground], gt_deltas[foreground], num_sampled, self.smooth_l1_beta
            ),
        }

    @torch.no_grad()
    def select_proposals(
        self,
        anchors: Tensor,
        pred_objectness_logits: Tensor,
        pred_anchor_deltas: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        num_anchors_per_level: Sequence[int] | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """anchors (M, 4), logits (N, M), deltas (N, M, 4) -> per image proposals (P_i, 4), logits (P_i,).

        Keep the pre-NMS top-k by objectness of each level (``num_anchors_per_level`` M_l, summing
        to M; None: one level), decode, clip to the image, drop tiny and low-scoring boxes, NMS per
        image and level, keep the post-NMS top-n of each image. Per-level top-k and NMS are
        torchvision's FPN rules: the many anchors of the finest level would otherwise crowd out the
        few large ones. All images are processed together; NMS runs once over the batch with
        (image, level) as the group.
        """
        N, M = pred_objectness_logits.shape
        device = anchors.device
        top_logits, top_idx, top_level = [], [], []
        start = 0
        for level, M_l in enumerate(num_anchors_per_level or [M]):
            k = min(self.pre_nms_top_n[self._mode()], M_l)
            level_logits, level_idx = pred_objectness_logits[:, start : start + M_l].topk(k, dim=1)  # (N, k)
            top_logits.append(level_logits)
            top_idx.append(level_idx + start)
            top_level.append(torch.full((k,), level, dtype=torch.int64, device=device))
            start += M_l
        top_logits, top_idx = torch.cat(top_logits, dim=1), torch.cat(top_idx, dim=1)  # (N, K) over levels
        K = top_idx.shape[1]
        top_deltas = pred_anchor_deltas.gather(1, top_idx[..., None].expand(N, K, 4))  # (N, K, 4)
        boxes = self.box_coder.decode(top_deltas.reshape(-1, 4), anchors[top_idx.reshape(-1)])  # (N*K, 4)
        sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device)  # (N, 2) as (h, w)
        boxes = clip_boxes(boxes.view(N, K, 4), sizes[:, None, 0:1], sizes[:, None, 1:2]).view(-1, 4)
        image_idx = torch.arange(N, device=device).repeat_interleave(K)  # (N*K,)
        num_levels = len(top_level)
        group = image_idx * num_levels + torch.cat(top_level).repeat(N)  # (N*K,) one NMS group per (image, level)
        logits = top_logits.reshape(-1).float()

        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        valid = (w >= self.min_box_size) & (h >= self.min_box_size) & torch.isfinite(logits)
        valid &= torch.sigmoid(logits) >= self.score_threshold
        keep = valid.nonzero()[:, 0]
        keep = keep[batched_nms(boxes[keep], logits[keep], group[keep], self.nms_threshold)]
        # batched_nms returns indices by decreasing score; a stable sort by image groups them per
        # image while keeping that order, so the first post_nms_top_n of each group are its best.
        keep = keep[torch.sort(image_idx[keep], stable=True).indices]
        counts = torch.bincount(image_idx[keep], minlength=N)  # (N,)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(keep.numel(), device=device) - starts.repeat_interleave(counts)
        keep = keep[rank < self.post_nms_top_n[self._mode()]]
        counts = torch.bincount(image_idx[keep], minlength=N).tolist()
        return list(boxes[keep].split(counts)), list(logits[keep].split(counts))
