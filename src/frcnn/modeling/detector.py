"""Faster R-CNN: one forward that yields the four losses and the detections.

    images -> InputTransform -> backbone -> RPN -> proposals -> RoI heads -> detections
                                               \\-> loss_rpn_cls, loss_rpn_reg   \\-> loss_cls, loss_box_reg

Boxes follow ``frcnn.modeling.boxes``; the batch contract is in docs/contracts.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from frcnn.modeling.backbone import feature_levels_of, feature_strides
from frcnn.modeling.boxes import validate_targets
from frcnn.modeling.errors import IncompatibleParts
from frcnn.modeling.output import DetectorOutput, loss_weights_for, weighted_total
from frcnn.modeling.roi_heads import RoIHeads
from frcnn.modeling.rpn import RegionProposalNetwork
from frcnn.modeling.transform import InputTransform


def check_anchor_levels(rpn: RegionProposalNetwork, backbone: nn.Module) -> None:
    """Per-level anchor sizes must be given for exactly the backbone's feature levels."""
    generator = rpn.anchor_generator
    levels = feature_levels_of(backbone)
    if generator.per_level and len(generator.sizes) != levels:
        raise IncompatibleParts(
            f"the anchors give sizes for {len(generator.sizes)} feature level(s), the backbone "
            f"{getattr(backbone, 'name', type(backbone).__name__)} gives {levels}"
        )


def check_pooler(pooler: nn.Module, backbone: nn.Module) -> None:
    """A pyramid's maps need a pooler that picks a level per RoI, from maps the backbone has."""
    strides = feature_strides(backbone)
    if isinstance(strides, int):
        return
    names = getattr(pooler, "featmap_names", None)
    if names is None:
        raise IncompatibleParts(
            f"the backbone {getattr(backbone, 'name', '')} gives {len(strides)} feature levels; its RoIs need "
            f"a MultiLevelRoIPooler, not a {type(pooler).__name__}"
        )
    if not set(names) & set(strides):
        raise IncompatibleParts(f"the pooler reads maps {list(names)}, the backbone gives {list(strides)}")


def build_first_stage(
    detector: nn.Module,
    backbone: nn.Module,
    num_classes: int,
    rpn: Callable[..., RegionProposalNetwork],
    transform: Callable[..., InputTransform],
    loss_weights: Mapping[str, float] | None,
) -> None:
    """What both detectors have: ``num_classes``, ``loss_weights``, ``transform`` (from the backbone's
    statistics and stride), ``backbone`` and ``rpn`` (on the backbone's channels), checked to fit."""
    detector.num_classes = num_classes
    detector.loss_weights = loss_weights_for(loss_weights)
    detector.transform = transform(backbone=backbone)
    detector.backbone = backbone
    detector.rpn = rpn(in_channels=backbone.out_channels)
    check_anchor_levels(detector.rpn, backbone)


class FasterRCNN(nn.Module):
    """Faster R-CNN with the seed's defaults.

    Args:
        backbone: a ``Backbone`` (``out_channels``, ``stride``, ``image_mean`` / ``std``) or an
            ``FPNBackbone`` (several maps, ``strides`` by name), with the RPN's anchors and the RoI
            pooler configured for it (``conf/model/faster_rcnn_fpn.yaml``).
        num_classes: K, without background.
        rpn: factory ``(in_channels=) -> RegionProposalNetwork`` (a Hydra partial or the class).
        roi_heads: factory ``(backbone=, num_classes=) -> RoIHeads``.
        transform: factory ``(backbone=) -> InputTransform`` (resize 600 / 1000 by default; the
            backbone supplies the statistics and the padding multiple left unset).
        loss_weights: weight of each of ``LOSS_NAMES`` in the total (1.0 when missing).

    Example::

        model = FasterRCNN(build_backbone("vgg16", weights="DEFAULT"), num_classes=20).eval()
        detections = model([image]).detections[0]   # boxes, scores, labels
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        rpn: Callable[..., RegionProposalNetwork] = RegionProposalNetwork,
        roi_heads: Callable[..., RoIHeads] = RoIHeads,
        transform: Callable[..., InputTransform] = InputTransform,
        loss_weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        build_first_stage(self, backbone, num_classes, rpn, transform, loss_weights)
        self.roi_heads = roi_heads(backbone=backbone, num_classes=num_classes)
        check_pooler(self.roi_heads.pooler, backbone)
        self.strides = feature_strides(backbone)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool | None = None,
    ) -> DetectorOutput:
        """images: list of (3, H_i, W_i) float in [0, 1]; targets: list of ``boxes`` (G_i, 4),
        ``labels`` (G_i,). Losses when targets are given; detections when not training, or when
        ``return_detections`` says so."""
        if return_detections is None:
            return_detections = not self.training
        if targets is not None:
            validate_targets(targets, [tuple(image.shape[-2:]) for image in images], self.num_classes)
        batch = self.transform(images, targets)  # resized, normalised, padded; targets resized
        features = self.backbone(batch.take_tensor())  # the padded input is freed once used
        rpn = self.rpn(features, batch.image_sizes, batch.padded_size, batch.targets)
        rcnn = self.roi_heads(
            features, rpn.proposals.boxes, batch.image_sizes, self.strides, batch.targets, return_detections
        )
        detections = None
        if rcnn.detections is not None:  # back to the pixels of the images given
            boxes = batch.to_original([det["boxes"] for det in rcnn.detections])
            detections = [{**det, "boxes": b} for det, b in zip(rcnn.detections, boxes)]
        return DetectorOutput(
            losses=weighted_total({**rpn.losses, **rcnn.losses}, self.loss_weights),
            detections=detections,
            proposals=batch.to_original(rpn.proposals.boxes),
        )
