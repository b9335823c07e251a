"""Fine-tune this project's detector and torchvision's FasterRCNN on raccoon with the same budget,
then compare mAP@0.5 on raccoon val (issue 6, benchmark b; target: ours >= reference + 0.05).

Both start from ../shared/weights/mobilenet_v2_imagenet_int8derived.pth:
- ours: ``conf/experiment/raccoon_mobilenet.yaml`` (MobileNetV2 ``features[:14]``, stride 16, 96
  channels; RPN conv 256, anchors 32..512, RoIAlign 7x7, FC head 512 wide), composed with Hydra and
  built by ``hydra.utils.instantiate`` exactly as ``src/train.py`` builds it;
- the reference: ``torchvision.models.detection.FasterRCNN`` on ``mobilenet_v2().features`` (stride
  32, 1280 channels) as torchvision's docs build a custom backbone, with its default heads
  (``bench/_finetune_common.build_reference``).

What is the same for both: the image size (``--min-size`` / ``--max-size``, resized once in the data
pipeline, so the models' own resize is a no-op), the augmentation (horizontal flip 0.5), the batches
themselves (one DataLoader from ``conf/data/raccoon.yaml``, read by both in the same order, each at
its own pace), the batch size, frozen BatchNorm and frozen stride <= 4 stages, SGD with momentum 0.9
and weight decay 1e-4, the lr's shape over the budget (linear warm-up over the first
``--warmup-fraction``, cosine to ``--min-lr-factor``), and the budget: ``--minutes`` of training
time per model. The peak lr is each model's own: ours the experiment's ``optimizer.lr`` (0.01),
the reference the 0.005 of torchvision's detection fine-tuning tutorial (batch 2). Ours decays
conv / linear weights only (as training does), the reference every parameter (as torchvision does).

The machine is shared, so the two trainings are interleaved: ``--slice`` seconds of ours, then of
the reference, and so on, each keeping its optimizer, its position in the batch stream and its own
random stream, until each has spent its budget. Only the model's steps are timed (``--clock wall``:
wall time, ``cpu``: this process's CPU time); fetching a batch is not. A step that starts within the
budget finishes, so a model overshoots it by at most one step.

    .venv/bin/python bench/finetune_raccoon.py --minutes 0.5              # smoke run
    nohup .venv/bin/python bench/finetune_raccoon.py --record > /tmp/finetune.log 2>&1 &
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine, record
from _finetune_common import RandomStream, pycocotools_ap, voc_ground_truth
from _finetune_train import BatchTape, Trainee, build_ours, build_torchvision, train_interleaved
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from frcnn.evaluation import COCOEvaluator, VOCEvaluator

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_int8derived.pth"
RACCOON = SHARED / "data" / "raccoon"
SECTION = "## Fine-tuning on raccoon"
REFERENCE_LR = 0.005  # torchvision's "TorchVision Object Detection Finetuning Tutorial", batch 2

def compose_config(args: argparse.Namespace) -> DictConfig:
    """The experiment's config with the benchmark's shared settings (size, batch, flip only)."""
    size = f"{{min_size: {args.min_size}, max_size: {args.max_size}}}"
    overrides = [
        "experiment=raccoon_mobilenet",
        f"paths.root_dir={ROOT}",
        f"backbone.weights_path={WEIGHTS}",
        f"model.transform.min_size={args.min_size}",
        f"model.transform.max_size={args.max_size}",
        f"data.batch_size={args.batch_size}",
        "data.num_workers=0",  # batches are fetched outside the timed steps; workers would steal the cores
        "data.persistent_workers=false",
        "data.train_aug.hflip=0.5",
        "data.train_aug.color_jitter=0.0",
        "data.train_aug.brightness_contrast=0.0",
        "data.train_aug.crop=0.0",
        f"data.train_aug.resize={size}",
        "data.eval_aug.resize=null",  # evaluate on the original images: both models resize themselves
        "optimizer.momentum=0.9",
        "optimizer.weight_decay=1e-4",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.inference_mode()
def detect_all(
    trainee: Trainee, loader
) -> tuple[dict[int, dict[str, Tensor]], list[dict[str, Tensor]], float]:
    """-> (detections by image id, the targets, seconds per image) over ``loader`` in eval mode."""
    trainee.model.eval()
    detections, targets_all, start = {}, [], time.perf_counter()
    with trainee.stream.active():
        for images, targets in loader:
            for det, target in zip(trainee.detect(images), targets):
                detections[int(target["image_id"])] = {k: v.detach().cpu() for k, v in det.items()}
                targets_all.append(target)
    return detections, targets_all, (time.perf_counter() - start) / max(1, len(targets_all))


def evaluate(
    detections: dict[int, dict[str, Tensor]],
    targets: list[dict[str, Tensor]],
    class_names: list[str],
    ground_truth: dict,
) -> dict[str, float]:
    preds = [detections[int(t["image_id"])] for t in targets]
    results = {"dets_per_image": sum(len(p["scores"]) for p in preds) / max(1, len(preds))}
    for name, use_07 in (("voc_area", False), ("voc_07", True)):
        voc = VOCEvaluator(class_names, iou_threshold=0.5, use_07_metric=use_07)
        voc.update(preds, targets)
        results[name] = voc.compute()["map_50"]
    coco = COCOEvaluator(class_names)
    coco.update(preds, targets)
    metrics = coco.compute()
    results["coco_map_50"], results["coco_map"] = metrics["map_50"], metrics["map"]
    results["pycoco_map"], results["pycoco_map_50"] = pycocotools_ap(ground_truth, detections)
    return results


def table(
    trainees: list[Trainee], results: dict[str, dict[str, float]], eval_s: dict[str, float], train_images: int
) -> str:
    lines = [
        "| model | steps | images seen (epochs) | train s wall / CPU | s / step | mAP@0.5 VOC area (07) "
        "| map_50 COCO | map COCO | pycocotools map_50 / map | eval s / image |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for t in trainees:
        r = results[t.name]
        lines.append(
            f"| {t.name}{' (diverged)' if t.diverged else ''} | {t.steps} | {t.images} ({t.images / train_images:.2f}) "
            f"| {t.wall_s:.0f} / {t.cpu_s:.0f} | {t.wall_s / max(1, t.steps):.2f} "
            f"| {r['voc_area']:.4f} ({r['voc_07']:.4f}) | {r['coco_map_50']:.4f} | {r['coco_map']:.4f} "
            f"| {r['pycoco_map_50']:.4f} / {r['pycoco_map']:.4f} | {eval_s[t.name]:.2f} |"
        )
    return "\n".join(lines)


def describe(cfg: DictConfig, args: argparse.Namespace, ours: Trainee, reference: Trainee) -> str:
    rpn, roi = cfg.model.rpn, cfg.model.roi_heads
    trainable = {
        t.name: sum(p.numel() for p in t.model.parameters() if p.requires_grad) for t in (ours, reference)
    }
    return "\n".join(
        [
            f"- Shared: image min {args.min_size} / max {args.max_size} (resized once in the data pipeline), batch "
            f"{args.batch_size}, horizontal flip 0.5, one batch stream, frozen BN and frozen MobileNetV2 "
            f"`features[:4]`, SGD momentum 0.9 weight decay 1e-4, lr: linear warm-up from 0.001x over the first "
            f"{args.warmup_fraction:.0%} of the budget then cosine to {args.min_lr_factor}x, {args.threads} torch "
            f"threads, seed {args.seed}, {args.slice:.0f} s slices interleaved, budget on the {args.clock} clock.",
            f"- ours: `experiment=raccoon_mobilenet`: mobilenet_v2 stride 16 / 96 ch, RPN conv {rpn.conv_channels}, "
            f"anchors {list(rpn.anchor_generator.sizes)} x {list(rpn.anchor_generator.aspect_ratios)}, pre-NMS "
            f"{rpn.pre_nms_top_n.train} / {rpn.pre_nms_top_n.test}, post-NMS {rpn.post_nms_top_n.train} / "
            f"{rpn.post_nms_top_n.test}, {roi.pooler.method} {roi.pooler.output_size}, FC head {roi.box_head.hidden_dim}, "
            f"{roi.batch_size_per_image} RoIs / image; peak lr {cfg.optimizer.lr}; "
            f"{trainable[ours.name] / 1e6:.1f} M trainable parameters.",
            f"- torchvision: `FasterRCNN(mobilenet_v2().features)` stride 32 / 1280 ch, anchors (32..512) x (0.5, 1, 2), "
            f"MultiScaleRoIAlign 7 / 2, default TwoMLPHead 1024, 512 RoIs / image, RPN 2000 / 1000 proposals; peak lr "
            f"{args.reference_lr}; {trainable[reference.name] / 1e6:.1f} M trainable parameters.",
        ]
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=8.0, help="training budget per model")
    parser.add_argument("--slice", type=float, default=30.0, help="seconds per turn before switching model")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="what the budget counts: wall time or process CPU time within the model's steps",
    )
    parser.add_argument("--min-size", type=int, default=480)
    parser.add_argument("--max-size", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--min-lr-factor", type=float, default=0.01)
    parser.add_argument("--reference-lr", type=float, default=REFERENCE_LR)
    parser.add_argument(
        "--record", action="store_true", help=f"write the table to bench/README.md ({SECTION})"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    started = datetime.datetime.now()
    load_before = os.getloadavg()

    cfg = compose_config(args)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    class_names = datamodule.class_names
    seed_everything(args.seed)
    ours = build_ours(cfg)
    seed_everything(args.seed)
    reference = build_torchvision(args, datamodule.num_classes, WEIGHTS)
    trainees = [ours, reference]
    seed_everything(args.seed)
    tape = BatchTape(datamodule.train_dataloader(), RandomStream())
    print(machine(torch.device("cpu")))
    print(describe(cfg, args, ours, reference), flush=True)

    train_interleaved(trainees, tape, args)

    val_loader = datamodule.val_dataloader()
    stems = [record.path.stem for record in datamodule.datasets["val"].records]
    ground_truth = voc_ground_truth(RACCOON / "Annotations", stems, class_names)
    results, eval_s = {}, {}
    for trainee in trainees:
        detections, targets, eval_s[trainee.name] = detect_all(trainee, val_loader)
        results[trainee.name] = evaluate(detections, targets, class_names, ground_truth)
        print(f"{trainee.name}: {results[trainee.name]}", flush=True)

    train_images = len(datamodule.datasets["train"])
    text = table(trainees, results, eval_s, train_images)
    margin = results[ours.name]["voc_area"] - results[reference.name]["voc_area"]
    verdict = (
        f"ours - torchvision = {margin:+.4f} mAP@0.5 (VOC area): target >= +0.05 "
        f"{'met' if margin >= 0.05 else 'NOT met'}."
    )
    print()
    print(text)
    print(verdict)
    print(f"batch fetching (not in either budget): {tape.fetch_seconds:.0f} s")

    if args.record:
        command = " ".join([".venv/bin/python", "bench/finetune_raccoon.py", *map(shlex.quote, sys.argv[1:])])
        load_after = os.getloadavg()
        record(
            SECTION,
            "\n".join(
                [
                    SECTION,
                    "",
                    f"{started:%Y-%m-%d}, `{command}`, {machine(torch.device('cpu'))}; load average {load_before[0]:.1f} at the start, "
                    f"{load_after[0]:.1f} at the end (the two trainings are interleaved, so other jobs on the "
                    "cores, if any, slow both alike).",
                    f"Raccoon train ({train_images} images) -> val ({len(stems)} images), both models from "
                    "`../shared/weights/mobilenet_v2_imagenet_int8derived.pth`, "
                    f"{args.minutes:g} min of training ({args.clock} clock) each.",
                    "",
                    describe(cfg, args, ours, reference),
                    "",
                    text,
                    "",
                    verdict,
                ]
            ),
        )


if __name__ == "__main__":
    main()
