"""Test-time augmentation: a detector run on several views of each image, the detections merged.

A view is a shorter side (one of ``scales``; the detector's transform resizes to it, the max size
kept) and optionally a horizontal flip. Each view's detections come back in the input image's
pixels (the detector maps the resize back itself); a flipped view's boxes are flipped back
(``unflip_boxes``); then the views are merged per image, class-wise (``frcnn.modeling.box_fusion``:
NMS or weighted box fusion).

    images -> [view 1: scale s_1]   -> detector -> boxes in image pixels ----------------\\
           -> [view 2: s_1, flipped] -> detector -> boxes in flipped pixels -> unflip -----> merge
           -> ...

With targets (validation), the losses are those of the first view (``scales[0]``, unflipped).
Shape shorthand: N images, D detections of one image, V views.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from frcnn.modeling.box_fusion import MERGES
from frcnn.modeling.output import DetectorOutput


def unflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes (D, 4) in a horizontally flipped image of ``width`` pixels -> (D, 4) in the image itself:
    x1 = width - x2', x2 = width - x1' (pixel edges: the flip maps edge x to width - x)."""
    return boxes[:, [2, 1, 0, 3]] * boxes.new_tensor([-1.0, 1.0, -1.0, 1.0]) + boxes.new_tensor([width, 0.0, width, 0.0])


class TestTimeAugmentation(nn.Module):
    """Wraps a detector (``FasterRCNN``, ``RPNDetector``) with test-time augmentation.

    Args:
        detector: the wrapped detector; its ``transform`` resizes to each scale.
        scales: shorter sides to run at (None: the detector's ``transform.test_min_size`` only).
        flip: also run each scale on the horizontally flipped images.
        merge: "nms" (class-wise NMS over the union) or "wbf" (weighted box fusion).
        iou_threshold: overlap above which boxes of one class are merged.
        max_detections: detections kept per image (None: the detector's ``detections_per_image``, else 100).

    In training mode it is the detector itself (augmentation at test time only).
    """

    __test__ = False  # not a pytest class

    def __init__(
        self,
        detector: nn.Module,
        scales: Sequence[int] | None = None,
        flip: bool = True,
        merge: str = "nms",
        iou_threshold: float = 0.55,
        max_detections: int | None = None,
    ) -> None:
        super().__init__()
        if merge not in MERGES:
            raise ValueError(f"tta merge must be one of {sorted(MERGES)}, got {merge!r}")
        self.detector = detector
        self.scales = tuple(int(s) for s in scales) if scales else (detector.transform.test_min_size,)
        self.views = [(scale, flipped) for scale in self.scales for flipped in ((False, True) if flip else (False,))]
        self.merge_name = merge
        self.merge = MERGES[merge]
        self.iou_threshold = float(iou_threshold)
        if max_detections is None:
            max_detections = getattr(getattr(detector, "roi_heads", None), "detections_per_image", 100)
        self.max_detections = int(max_detections)
        self.train(detector.training)  # in the detector's mode

    @property
    def num_classes(self) -> int:
        return self.detector.num_classes

    @property
    def transform(self) -> nn.Module:
        return self.detector.transform

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[dict[str, Tensor]] | None = None,
        return_detections: bool | None = None,
    ) -> DetectorOutput:
        """As the detector's forward; detections are the merged views' (when not training, or asked for)."""
        if self.training and not return_detections:
            return self.detector(images, targets, return_detections)
        widths = [int(image.shape[-1]) for image in images]
        first, per_view = None, []
        for index, (scale, flipped) in enumerate(self.views):
            view = [image.flip(-1) for image in images] if flipped else list(images)
            with self.detector.transform.evaluated_at(scale):
                out = self.detector(view, targets if index == 0 else None, return_detections=True)
            if index == 0:
                first = out
            if flipped:
                out.detections = [{**d, "boxes": unflip_boxes(d["boxes"], w)} for d, w in zip(out.detections, widths)]
            per_view.append(out.detections)
        merged = [
            self.merge([view[i] for view in per_view], self.iou_threshold, self.max_detections)
            for i in range(len(images))
        ]
        return DetectorOutput(losses=first.losses, detections=merged, proposals=first.proposals)

    def extra_repr(self) -> str:
        return f"views={self.views}, merge={self.merge_name}, iou_threshold={self.iou_threshold}"
