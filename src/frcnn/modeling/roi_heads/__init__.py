"""The R-CNN stage: training RoIs (``sampling``), RoI pooling (``poolers``), box heads and the
class / box predictor (``box_head``), losses (``losses``), detections (``postprocess``), and the
module that composes them (``roi_heads``)."""

from frcnn.modeling.roi_heads.box_head import BoxPredictor, FCHead, ResNetC5Head
from frcnn.modeling.roi_heads.losses import rcnn_classification_loss, rcnn_losses, select_class_deltas
from frcnn.modeling.roi_heads.poolers import MultiLevelRoIPooler, RoIPooler, boxes_to_rois, fpn_levels
from frcnn.modeling.roi_heads.postprocess import postprocess_detections
from frcnn.modeling.roi_heads.roi_heads import RoIHeads, RoIHeadsOutput
from frcnn.modeling.roi_heads.sampling import SampledRoIs, sample_rois

__all__ = [
    "BoxPredictor",
    "FCHead",
    "MultiLevelRoIPooler",
    "ResNetC5Head",
    "RoIHeads",
    "RoIHeadsOutput",
    "RoIPooler",
    "SampledRoIs",
    "boxes_to_rois",
    "fpn_levels",
    "postprocess_detections",
    "rcnn_classification_loss",
    "rcnn_losses",
    "sample_rois",
    "select_class_deltas",
]
