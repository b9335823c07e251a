"""Augmentation: exact box geometry, labels aligned, boxes always valid and inside the image."""

from collections import Counter

import albumentations as A
import numpy as np
import pytest
import torch
from datafiles import COCO128, random_pixels

from frcnn.data import Augmentation, CocoSource, DetectionDataset, load_split
from frcnn.data.transforms import box_compose
from frcnn.modeling.transform import resized_size

NO_BOXES = np.zeros((0, 4), np.float32)
NO_LABELS = np.zeros(0, np.int64)


def test_flip_mirrors_boxes_and_ignored_boxes_exactly():
    image = random_pixels(64, 48)
    boxes = np.array([[0, 0, 10, 20], [30.5, 5, 64, 48]], np.float32)
    ignore = np.array([[2, 3, 4, 5]], np.float32)
    sample = Augmentation(hflip=1.0)(image, boxes, np.array([3, 1]), ignore, np.array([2]))
    np.testing.assert_array_equal(sample.image, image[:, ::-1])
    # x1' = W - x2, x2' = W - x1 with W = 64
    np.testing.assert_allclose(sample.boxes, [[54, 0, 64, 20], [0, 5, 33.5, 48]], atol=1e-4)
    np.testing.assert_array_equal(sample.labels, [3, 1])
    np.testing.assert_allclose(sample.ignore_boxes, [[60, 3, 62, 5]], atol=1e-4)
    np.testing.assert_array_equal(sample.ignore_labels, [2])


@pytest.mark.parametrize("size, expected", [((640, 480), (800, 600)), ((2000, 1333), (900, 600)),
                                            ((2001, 999), (1000, 499)), ((178, 154), (693, 600)),
                                            ((359, 640), (560, 1000)), ((333, 500), (600, 900))])
def test_resize_follows_the_model_rule_so_the_model_resize_is_a_no_op(size, expected):
    width, height = size
    box = np.array([[0, 0, width, height], [10, 20, 30, 40]], np.float32)
    sample = Augmentation(resize={"min_size": 600, "max_size": 1000})(
        np.zeros((height, width, 3), np.uint8), box, np.array([1, 2]), NO_BOXES, NO_LABELS)
    new_height, new_width = sample.image.shape[:2]
    assert (new_width, new_height) == expected
    assert resized_size(new_height, new_width, 600, 1000) == (new_height, new_width)  # the model then does nothing
    sx, sy = new_width / width, new_height / height
    np.testing.assert_allclose(sample.boxes, [[0, 0, new_width, new_height], [10 * sx, 20 * sy, 30 * sx, 40 * sy]],
                               rtol=1e-5)


def test_box_safe_crop_translates_every_box_and_keeps_labels():
    image = random_pixels(96, 80, seed=1)
    boxes = np.array([[20, 30, 40, 50], [50, 10, 70, 25]], np.float32)
    ignore = np.array([[30, 40, 60, 60]], np.float32)
    augmentation = Augmentation(crop=1.0)
    for _ in range(5):
        sample = augmentation(image, boxes, np.array([2, 5]), ignore, np.array([7]))
        np.testing.assert_array_equal(sample.labels, [2, 5])
        np.testing.assert_array_equal(sample.ignore_labels, [7])
        offset = boxes[0, :2] - sample.boxes[0, :2]  # where the crop starts in the original
        np.testing.assert_allclose(sample.boxes, boxes - np.tile(offset, 2), atol=1e-3)
        np.testing.assert_allclose(sample.ignore_boxes, ignore - np.tile(offset, 2), atol=1e-3)
        x0, y0 = np.round(offset).astype(int)
        height, width = sample.image.shape[:2]
        np.testing.assert_array_equal(sample.image, image[y0:y0 + height, x0:x0 + width])


def test_a_box_that_leaves_the_image_takes_its_label_with_it():
    augmentation = Augmentation()
    augmentation.compose = box_compose([A.Crop(x_min=0, y_min=0, x_max=40, y_max=30)], min_visibility=0.5)
    boxes = np.array([[0, 0, 10, 10], [35, 25, 60, 45], [20, 0, 50, 20]], np.float32)
    sample = augmentation(random_pixels(64, 48), boxes, np.array([1, 2, 3]),
                          np.array([[50, 40, 60, 48], [1, 1, 5, 5]], np.float32), np.array([4, 5]))
    assert sample.image.shape == (30, 40, 3)
    # label 2 keeps 5 % of its box (< min_visibility): gone; label 3 keeps 67 %: clipped.
    np.testing.assert_allclose(sample.boxes, [[0, 0, 10, 10], [20, 0, 40, 20]], atol=1e-4)
    np.testing.assert_array_equal(sample.labels, [1, 3])
    np.testing.assert_allclose(sample.ignore_boxes, [[1, 1, 5, 5]], atol=1e-4)
    np.testing.assert_array_equal(sample.ignore_labels, [5])


@pytest.mark.shared_data
def test_training_pipeline_on_coco128_keeps_boxes_valid_inside_and_aligned():
    records, _ = load_split(CocoSource(COCO128 / "images", COCO128 / "annotations" / "instances.json"), "header")
    records = records[:24]
    augmentation = Augmentation(hflip=0.5, color_jitter=0.5, brightness_contrast=0.5, crop=0.5)
    torch.manual_seed(0)
    for record, (image, target) in zip(records, DetectionDataset(records, augmentation)):
        _, height, width = image.shape
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        for boxes, labels in ((target["boxes"], target["labels"]), (target["ignore_boxes"], target["ignore_labels"])):
            assert boxes.dtype == torch.float32 and labels.dtype == torch.int64 and len(boxes) == len(labels)
            assert bool((boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all())
            assert bool((boxes >= 0).all() and (boxes[:, [0, 2]] <= width).all() and (boxes[:, [1, 3]] <= height).all())
        # Flip and box-safe crop never lose a box, and keep each box's size: pair them by label and width.
        # (albumentations rounds the crop to whole pixels, which may shave < 1 px off a fractional box.)
        assert Counter(record.labels.tolist()) == Counter(target["labels"].tolist()), record.path
        expected = sorted(zip(record.labels.tolist(), (record.boxes[:, 2] - record.boxes[:, 0]).tolist()))
        got = sorted(zip(target["labels"].tolist(), (target["boxes"][:, 2] - target["boxes"][:, 0]).tolist()))
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1.0, rtol=0.0)


def test_augmentation_reseeds_from_the_torch_seed_of_each_worker():
    image = random_pixels(32, 32)

    def flips(seed):
        augmentation = Augmentation(hflip=0.5)  # as a freshly started worker holds it
        torch.manual_seed(seed)  # what a DataLoader worker's initial seed is
        return [bool(augmentation(image, NO_BOXES, NO_LABELS, NO_BOXES, NO_LABELS).image[0, 0, 0] != image[0, 0, 0])
                for _ in range(24)]

    first = flips(1)
    assert flips(1) == first and flips(2) != first and 4 < sum(first) < 20
