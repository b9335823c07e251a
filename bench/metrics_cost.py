"""What COCO evaluation costs at the end of a validation epoch, per backend.

A synthetic validation set shaped like COCO val: `--images` images, 80 classes, ~7 ground-truth boxes
per image (1 in 20 images with a crowd box), and 100 detections per image (jittered ground truth plus
false positives of random classes, random scores). For each backend it times
- update: moving one batch's detections and targets to the CPU store, summed over the set;
- compute: building the COCO datasets, COCOeval's evaluate + accumulate, the summary;
and, when torchmetrics is installed, the same for its `MeanAveragePrecision(class_metrics=True)`.
The per-image cost (update + compute) / images is what to set beside a model's per-image inference
time: the issue's target is that the metric adds < 10 % to a validation epoch.

    .venv/bin/python bench/metrics_cost.py --images 500 5000 --record
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

from frcnn.evaluation import COCOEvaluator, available_backends

NUM_CLASSES = 80
DETS_PER_IMAGE = 100
SECTION = "## Evaluation cost"
GPU_INFERENCE_MS = 100.0  # a ResNet-50 Faster R-CNN at 600 px, per image (issue 6)


def synthetic_set(num_images: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(preds, targets) per image in the project's format, 640 x 480 images."""
    generator = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    size = torch.tensor([640.0, 480.0, 640.0, 480.0])
    for image_id in range(num_images):
        num_gt = int(torch.randint(0, 15, (), generator=generator))
        xy = torch.rand(num_gt, 2, generator=generator) * 500
        gt = torch.cat([xy, xy + 8 + torch.rand(num_gt, 2, generator=generator) * 200], dim=1).minimum(size)
        gt_labels = torch.randint(1, NUM_CLASSES + 1, (num_gt,), generator=generator)
        num_crowd = int(image_id % 20 == 0)
        found = gt + torch.randn(num_gt, 4, generator=generator) * 6
        num_false = DETS_PER_IMAGE - num_gt
        xy = torch.rand(num_false, 2, generator=generator) * 560
        false = torch.cat([xy, xy + 4 + torch.rand(num_false, 2, generator=generator) * 150], dim=1)
        preds.append(
            {
                "boxes": torch.cat([found, false]),
                "scores": torch.rand(DETS_PER_IMAGE, generator=generator),
                "labels": torch.cat(
                    [gt_labels, torch.randint(1, NUM_CLASSES + 1, (num_false,), generator=generator)]
                ),
            }
        )
        targets.append(
            {
                "boxes": gt,
                "labels": gt_labels,
                "image_id": torch.tensor(image_id),
                "ignore_boxes": torch.tensor([[0.0, 0.0, 320.0, 240.0]] * num_crowd),
                "ignore_labels": torch.ones(num_crowd, dtype=torch.int64),
            }
        )
    return preds, targets


def _time_metric(metric, preds, targets, batch_size: int = 8) -> tuple[float, float, float]:
    """-> (update seconds, compute seconds, map)."""
    start = time.perf_counter()
    for i in range(0, len(preds), batch_size):
        metric.update(preds[i : i + batch_size], targets[i : i + batch_size])
    updated = time.perf_counter()
    result = metric.compute()
    done = time.perf_counter()
    return updated - start, done - updated, float(result["map"])


def measure(num_images: int, with_torchmetrics: bool) -> list[dict]:
    preds, targets = synthetic_set(num_images)
    class_names = [f"class{k}" for k in range(1, NUM_CLASSES + 1)]
    rows = []
    for backend in available_backends():
        update_s, compute_s, value = _time_metric(COCOEvaluator(class_names, backend=backend), preds, targets)
        rows.append(
            {
                "metric": f"COCOEvaluator({backend})",
                "update_s": update_s,
                "compute_s": compute_s,
                "map": value,
            }
        )
    if with_torchmetrics:
        from torchmetrics.detection import MeanAveragePrecision

        tm_targets = [{k: t[k] for k in ("boxes", "labels")} for t in targets]  # crowd via `iscrowd` only
        for t, target in zip(tm_targets, targets):
            t["boxes"] = torch.cat([target["boxes"], target["ignore_boxes"]])
            t["labels"] = torch.cat([target["labels"], target["ignore_labels"]])
            t["iscrowd"] = torch.cat(
                [
                    torch.zeros(len(target["labels"]), dtype=torch.int64),
                    torch.ones(len(target["ignore_labels"]), dtype=torch.int64),
                ]
            )
        for backend in available_backends():
            metric = MeanAveragePrecision(class_metrics=True, backend=backend)
            update_s, compute_s, value = _time_metric(metric, preds, tm_targets)
            rows.append(
                {
                    "metric": f"torchmetrics({backend})",
                    "update_s": update_s,
                    "compute_s": compute_s,
                    "map": value,
                }
            )
    for row in rows:
        row["images"] = num_images
        row["ms_per_image"] = 1000 * (row["update_s"] + row["compute_s"]) / num_images
    return rows


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.machine()


def table(rows: list[dict]) -> str:
    lines = [
        "| images | metric | update s | compute s | ms / image | map |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['metric']} | {r['update_s']:.2f} | {r['compute_s']:.2f} | "
            f"{r['ms_per_image']:.2f} | {r['map']:.4f} |"
        )
    return "\n".join(lines)


def verdict(rows: list[dict]) -> str:
    """The default evaluator's cost on the largest set, beside a GPU's per-image inference time."""
    default = f"COCOEvaluator({available_backends()[0]})"
    row = max((r for r in rows if r["metric"] == default), key=lambda r: r["images"])
    share = row["ms_per_image"] / (GPU_INFERENCE_MS + row["ms_per_image"])
    return (
        f"The default, {default}, costs {row['ms_per_image']:.1f} ms per image at {row['images']} images: "
        f"{100 * share:.1f} % of a validation epoch beside the ~{GPU_INFERENCE_MS:.0f} ms per image of a "
        "ResNet-50 Faster R-CNN at 600 px on a GPU (target < 10 %), and far less on a CPU, where "
        "inference takes seconds per image."
    )


def record(markdown: str, readme: Path) -> None:
    """Put `markdown` as this benchmark's section of bench/README.md, leaving the other sections alone."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    start = text.find(SECTION)
    markdown = markdown.rstrip("\n") + "\n"
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + markdown
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + markdown + (text[end:] if end != -1 else "")
    readme.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[500, 5000])
    parser.add_argument(
        "--no-torchmetrics", action="store_true", help="skip torchmetrics' MeanAveragePrecision"
    )
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    try:
        import torchmetrics  # noqa: F401

        with_torchmetrics = not args.no_torchmetrics
    except ImportError:
        with_torchmetrics = False
        print("torchmetrics is not installed: its column is skipped", file=sys.stderr)

    rows = []
    for num_images in args.images:
        rows += measure(num_images, with_torchmetrics)
        print(table(rows), flush=True)
    machine = f"{_cpu_name()}, {os.cpu_count()} cores, CPU only"
    markdown = "\n".join(
        [
            SECTION,
            "",
            f"{datetime.date.today().isoformat()}, `{' '.join(['.venv/bin/python', *sys.argv])}`, {machine}.",
            f"Synthetic COCO-val-like set: 80 classes, ~7 boxes and {DETS_PER_IMAGE} detections per image.",
            "update = copying each batch to the CPU store over the whole set; compute = COCO datasets + "
            "evaluate + accumulate + summary. ms / image = (update + compute) / images, to set beside the "
            "model's per-image inference time (target: the metric adds < 10 % to a validation epoch).",
            "",
            table(rows),
            "",
            verdict(rows),
            "",
        ]
    )
    if args.record:
        record(markdown, Path(__file__).resolve().parent / "README.md")


if __name__ == "__main__":
    main()
