"""What an exported model says about itself: ONNX ``metadata_props`` (string keys and values).

    class_names            JSON list; class_names[k - 1] is label k
    label_to_category_id   JSON object label -> the dataset's category id (COCO results)
    score_threshold        the detection score floor it was exported with
    nms_iou                the NMS IoU threshold
    detections_per_image   the cap on detections per image
    config_hash            sha256 of the training run's model + data config and class list
    min_size / max_size    the resize inside the graph (shorter side, cap on the longer side)
    input / outputs        the contract in words
    frcnn_export           version of this contract (1)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from torch import nn

from frcnn.modeling import RPNDetector

CONTRACT_VERSION = "1"
INPUT_CONTRACT = "images: float32 (N, 3, H, W) RGB in [0, 1]; N, H, W dynamic; resize and normalisation inside"
OUTPUT_CONTRACT = (
    "boxes float32 (M, 4) x1 y1 x2 y2 in input pixels; scores float32 (M,); labels int64 (M,) in 1..K; "
    "batch_index int64 (M,); grouped by image, by decreasing score"
)


def config_hash(hparams: Mapping) -> str:
    """sha256 of the checkpoint's model config, data config, class names and label map (canonical JSON)."""
    keys = ("model_config", "data_config", "class_names", "label_to_category_id")
    canonical = json.dumps({k: hparams.get(k) for k in keys}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_metadata(
    model: nn.Module,
    class_names: Sequence[str],
    label_to_category_id: Mapping[int, int] | None = None,
    config_digest: str = "",
) -> dict[str, str]:
    """The ``metadata_props`` of ``model`` exported with these classes."""
    if isinstance(model, RPNDetector):
        score, iou, per_image = model.rpn.score_threshold, model.rpn.nms_threshold, model.rpn.post_nms_top_n["test"]
    else:
        heads = model.roi_heads
        score, iou, per_image = heads.score_threshold, heads.nms_threshold, heads.detections_per_image
    label_map = label_to_category_id or {k: k for k in range(1, len(class_names) + 1)}
    return {
        "class_names": json.dumps(list(class_names)),
        "label_to_category_id": json.dumps({str(int(k)): int(v) for k, v in label_map.items()}),
        "score_threshold": repr(float(score)),
        "nms_iou": repr(float(iou)),
        "detections_per_image": str(int(per_image)),
        "config_hash": config_digest,
        "min_size": str(int(model.transform.test_min_size)),
        "max_size": str(int(model.transform.max_size)),
        "input": INPUT_CONTRACT,
        "outputs": OUTPUT_CONTRACT,
        "frcnn_export": CONTRACT_VERSION,
    }


def parse_class_names(metadata: Mapping[str, str], source: str) -> list[str]:
    """``class_names`` of a model's metadata, with an error naming ``source`` when it has none."""
    if "class_names" not in metadata:
        raise ValueError(f"{source} has no class_names in its metadata: not exported by src/export.py")
    return [str(name) for name in json.loads(metadata["class_names"])]
