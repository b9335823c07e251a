"""What bench/recipes.py runs: the three data sets, each recipe's config overrides, the TTA variants.

- ``raccoon``: ``experiment=raccoon_mobilenet`` from ../shared's MobileNetV2 weights, with
  bench/finetune_raccoon.py's settings (the run that measured "today's 0.90"): batch 2, flip only,
  SGD momentum 0.9 weight decay 1e-4, the lr shaped over the budget; the model resizes (480 / 800).
- ``longtail``: ``experiment=shapes_fast`` (tiny backbone) on a training subset of the shapes data
  with one class 20x rarer than the others (``write_longtail``); evaluated on the full, balanced val.
- ``small``: ``experiment=shapes_fast`` on shapes drawn 6..29 px (before the model's 256 px
  resize), which the experiment's anchors (16..128 px squares) partly miss.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "bench_recipes"  # generated here (data/ is git-ignored)
RARE = "triangle"
IMBALANCE = 20  # common-class boxes per rare-class box in the long-tail training subset

# Shared by every run: no validation, checkpoints, loggers or progress bar during the budget; the lr
# comes from the budget (bench/_recipes_run.CPUBudget), so the schedule is a constant factor 1.
COMMON = [
    "schedule=constant", "schedule.warmup_steps=0", "~schedule.min_factor", "callbacks=none", "~logger",
    "trainer=cpu", "trainer.max_epochs=100000", "trainer.min_epochs=0", "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
    "+trainer.enable_model_summary=false", "test=false", "print_config=false",
    "data.num_workers=0", "data.persistent_workers=false", "data.eval_batch_size=1",
]
# The raccoon runs train with what a user's training gets by default: the TrainingSpeed rewrite
# (frozen BatchNorm folded, channels-last, sparse RPN backward). The first and second series ran
# without it (``callbacks=none`` alone): 1.06 against 0.76 CPU s per step (bench/README.md).
SPEED = "callbacks=[none,training_speed]"
RACCOON = [
    *COMMON, SPEED, "experiment=raccoon_mobilenet", "data.batch_size=2", "data.train_aug.hflip=0.5", "data.train_aug.color_jitter=0.0",
    "data.train_aug.brightness_contrast=0.0", "data.train_aug.crop=0.0", "data.train_aug.resize=null",
    "optimizer.momentum=0.9", "optimizer.weight_decay=1e-4",
]
SHAPES = [*(o for o in COMMON if o != "~schedule.min_factor"), "experiment=shapes_fast"]  # it sets no min_factor
SMALL_GENERATOR = {"root": str(DATA / "shapes_small"), "min_box_size": 6, "max_box_fraction": 0.15}

EMA = ["callbacks=[none,training_speed,ema]", "callbacks.ema.decay=0.99", "callbacks.ema.warmup_steps=25"]
MULTISCALE = ["model.transform.min_size=[384,416,448,480,512,544,576]", "model.transform.test_min_size=480"]
SIZE_384 = ["model.transform.min_size=384", "model.transform.max_size=640"]
AUTO_ANCHORS = ["model.rpn.anchor_generator.sizes=auto", "model.rpn.anchor_generator.aspect_ratios=auto"]

TTA_SCALES = [400, 480, 560]
TTA = {
    "none": None,
    "flip_nms": {"flip": True, "merge": "nms"},
    "flip_wbf": {"flip": True, "merge": "wbf"},
    "scales_nms": {"scales": TTA_SCALES, "merge": "nms"},
    "scales_wbf": {"scales": TTA_SCALES, "merge": "wbf"},
    "flip_scales_nms": {"flip": True, "scales": TTA_SCALES, "merge": "nms"},
    "flip_scales_wbf": {"flip": True, "scales": TTA_SCALES, "merge": "wbf"},
}
NO_TTA = {"none": None, "flip_nms": TTA["flip_nms"]}


def longtail_overrides() -> list[str]:
    shapes = DATA / "shapes"
    return [
        *SHAPES, "data=coco", "data.num_classes=3",
        f"data.train.image_dir={shapes / 'JPEGImages'}", f"data.train.ann_file={DATA / 'longtail_train.json'}",
        f"data.val.image_dir={shapes / 'JPEGImages'}", f"data.val.ann_file={shapes / 'coco' / 'instances_val.json'}",
    ]


def small_overrides() -> list[str]:
    return [*SHAPES, *(f"data.train.generator.{key}={value}" for key, value in SMALL_GENERATOR.items())]


# suite -> recipe -> (overrides, TTA variants evaluated)
SUITES: dict[str, dict[str, tuple[list[str], dict]]] = {
    "raccoon": {
        "plain": ([*RACCOON], TTA),
        "multiscale": ([*RACCOON, *MULTISCALE], NO_TTA),
        "multiscale_tta": ([*RACCOON, *MULTISCALE], TTA),  # the same training, every TTA variant evaluated
        "ema": ([*RACCOON, *EMA], NO_TTA),
        "auto_anchors": ([*RACCOON, *AUTO_ANCHORS], NO_TTA),
        # The defaults the issue names (lr, image size, RoIs), one at a time, for the >= 0.93 target.
        "lr_0.02": ([*RACCOON, "optimizer.lr=0.02"], NO_TTA),
        "size_384": ([*RACCOON, *SIZE_384], NO_TTA),
        "rois_128": ([*RACCOON, "model.roi_heads.batch_size_per_image=128"], NO_TTA),
        "lr_0.02_size_384": ([*RACCOON, "optimizer.lr=0.02", *SIZE_384], TTA),
    },
    "longtail": {
        "plain": (longtail_overrides(), NO_TTA),
        "repeat_factor_0.3": ([*longtail_overrides(), "data.repeat_factor_threshold=0.3"], NO_TTA),
    },
    "small": {
        "plain": (small_overrides(), NO_TTA),
        "auto_sizes": ([*small_overrides(), "model.rpn.anchor_generator.sizes=auto"], NO_TTA),
    },
}


def write_longtail() -> dict:
    """The shapes data (generated if missing) and a training subset where ``RARE`` has 1 box per
    ``IMBALANCE`` boxes of each other class: every image without it, then images with it (fewest rare
    boxes first) while the ratio allows. Written as COCO JSON beside it; returns the box counts."""
    from frcnn.data import SHAPE_CLASSES, ShapesGenerator

    ShapesGenerator(DATA / "shapes").ensure()  # the default generator parameters, another root
    ShapesGenerator(**SMALL_GENERATOR).ensure()
    coco = json.loads((DATA / "shapes" / "coco" / "instances_train.json").read_text())
    rare_id = SHAPE_CLASSES.index(RARE) + 1
    by_image: dict[int, list[dict]] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    rare_count = {i["id"]: sum(a["category_id"] == rare_id for a in by_image.get(i["id"], [])) for i in coco["images"]}
    keep = [i for i in coco["images"] if rare_count[i["id"]] == 0]
    counts = {c: 0 for c in range(1, len(SHAPE_CLASSES) + 1)}
    for image in keep:
        for annotation in by_image.get(image["id"], []):
            counts[annotation["category_id"]] += 1
    common = min(n for c, n in counts.items() if c != rare_id)
    for image in sorted((i for i in coco["images"] if rare_count[i["id"]]), key=lambda i: rare_count[i["id"]]):
        if (counts[rare_id] + rare_count[image["id"]]) * IMBALANCE > common:
            break
        keep.append(image)
        for annotation in by_image[image["id"]]:
            counts[annotation["category_id"]] += 1
        common = min(n for c, n in counts.items() if c != rare_id)
    ids = {i["id"] for i in keep}
    subset = {**coco, "images": keep, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
    (DATA / "longtail_train.json").write_text(json.dumps(subset))
    return {"images": len(keep), "boxes": {SHAPE_CLASSES[c - 1]: n for c, n in counts.items()},
            "images_with_rare": sum(rare_count[i] > 0 for i in ids)}
