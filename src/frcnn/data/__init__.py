"""The data side: COCO / VOC / YOLO / CSV / synthetic-shapes sources (and their concatenation), validation, augmentation, the DataModule.

Samples follow docs/contracts.md; images come at their own resolution (the model resizes).
"""

from frcnn.data.batching import GroupedBatchSampler, orientation_groups
from frcnn.data.coco import CocoSource
from frcnn.data.concat import ConcatSource
from frcnn.data.csv_source import CsvSource
from frcnn.data.datamodule import DetectionDataModule, load_split
from frcnn.data.dataset import DetectionDataset, RawSample, collate_detection, image_to_tensor
from frcnn.data.decode import ImageDecodeError, inspect_image, read_image
from frcnn.data.records import DataError, ImageRecord, Problem, Source
from frcnn.data.repeat_factor import RepeatFactorBatchSampler, repeat_factors
from frcnn.data.shapes import SHAPE_CLASSES, ShapesGenerator, ShapesSource
from frcnn.data.transforms import Augmentation, ResizeMinMax
from frcnn.data.validate import format_report, summarize, validate_records
from frcnn.data.voc import VOC_CLASSES, VocSource
from frcnn.data.yolo import YoloSource

__all__ = [
    "SHAPE_CLASSES",
    "VOC_CLASSES",
    "Augmentation",
    "CocoSource",
    "ConcatSource",
    "CsvSource",
    "DataError",
    "DetectionDataModule",
    "DetectionDataset",
    "GroupedBatchSampler",
    "ImageDecodeError",
    "ImageRecord",
    "Problem",
    "RawSample",
    "RepeatFactorBatchSampler",
    "ResizeMinMax",
    "ShapesGenerator",
    "ShapesSource",
    "Source",
    "VocSource",
    "YoloSource",
    "collate_detection",
    "format_report",
    "image_to_tensor",
    "inspect_image",
    "load_split",
    "orientation_groups",
    "read_image",
    "repeat_factors",
    "summarize",
    "validate_records",
]
