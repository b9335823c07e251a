"""Post-processing of the R-CNN outputs into detections (pure functions).

Shape shorthand: R RoIs over the batch, K classes, N images, D detections of one image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from frcnn.modeling.batched import top_k_per_group
from frcnn.modeling.boxes import BoxCoder, clip_boxes


def postprocess_detections(
    pred_class_logits: Tensor,
    pred_deltas: Tensor,
    proposals_per_image: Sequence[Tensor],
    image_sizes: Sequence[tuple[int, int]],
    box_coder: BoxCoder,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    detections_per_class: int = 100,
    detections_per_image: int = 100,
    min_box_size: float = 1e-2,
) -> list[dict[str, Tensor]]:
    """The seed's post-processing, for every image of the batch at once.

    Args:
        pred_class_logits: (R, K+1); pred_deltas: (R, 4*K); proposals_per_image: (R_i, 4) with
            sum R_i = R; image_sizes: (h, w) per image for clipping.
    Returns:
        per image ``{"boxes": (D, 4), "scores": (D,), "labels": (D,) int64 in 1..K}`` sorted by score.

    Softmax over K+1 classes; every (RoI, class) pair whose score passes ``score_threshold`` is a
    candidate with its own class-specific box (not only the argmax class: a RoI may hold a
    "dog" at 0.45 and a "cat" at 0.40, and mAP rewards keeping both); clip; class-wise NMS per
    image; at most ``detections_per_class`` per class and ``detections_per_image`` per image.
    """
    N = len(proposals_per_image)
    device = pred_class_logits.device
    R, K1 = pred_class_logits.shape
    K = K1 - 1
    proposals = torch.cat(list(proposals_per_image)) if N else pred_deltas.new_zeros((0, 4))
    counts = torch.tensor([p.shape[0] for p in proposals_per_image], device=device)
    image_idx = torch.arange(N, device=device).repeat_interleave(counts)  # (R,)

    scores = torch.softmax(pred_class_logits.float(), dim=1)[:, 1:]  # (R, K), background dropped
    boxes = box_coder.decode(pred_deltas, proposals).view(R, K, 4)  # (R, 4*K) -> (R, K, 4)
    sizes = torch.tensor(image_sizes, dtype=boxes.dtype, device=device).view(-1, 2)[image_idx]  # (R, 2)
    boxes = clip_boxes(boxes, sizes[:, None, 0:1], sizes[:, None, 1:2])  # bounds (R, 1, 1)

    labels = torch.arange(1, K + 1, device=device).expand(R, K)  # (R, K)
    img = image_idx[:, None].expand(R, K)
    boxes, scores, labels, img = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1), img.reshape(-1)

    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = ((scores > score_threshold) & (w >= min_box_size) & (h >= min_box_size)).nonzero()[:, 0]
    group = img[keep] * K + labels[keep] - 1  # one NMS group per (image, class)
    keep = keep[batched_nms(boxes[keep], scores[keep], group, nms_threshold)]
    keep = keep[top_k_per_group(scores[keep], img[keep] * K + labels[keep] - 1, detections_per_class)]
    keep = keep[top_k_per_group(scores[keep], img[keep], detections_per_image)]  # by image, by score

    per_image = torch.bincount(img[keep], minlength=N).tolist()
    return [
        {"boxes": b, "scores": s, "labels": lab}
        for b, s, lab in zip(boxes[keep].split(per_image), scores[keep].split(per_image), labels[keep].split(per_image))
    ]
