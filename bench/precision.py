"""bfloat16 mixed precision against float32 on the CPU: a training step and an inference forward.

What ``trainer.precision=bf16-mixed`` runs: the step under ``torch.autocast("cpu", torch.bfloat16)``
(boxes, deltas and losses stay float32; RoIAlign samples in float32). Models built from the project's
configs (``frcnn.tools.compose``): the default run's tiny detector on 256 px images, and the seed's
Faster R-CNN on ResNet-18 (C4, random weights) at min side 384. Two images a batch with three boxes
each. The two precisions alternate, ``--repeats`` times after a warm-up; the table gives the median
and the [min, max] of the seconds per call, and the ratio of the medians (float32 / bfloat16: above 1
means bfloat16 is faster). Process CPU seconds per call are the cross-check on a shared machine.

    .venv/bin/python bench/precision.py [--repeats 5] [--threads 1] [--models tiny,resnet18] [--record]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
from pathlib import Path

import torch
from _common import machine, record, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from frcnn.app.build import build_model  # noqa: E402
from frcnn.tools.compose import compose_project_config  # noqa: E402

SECTION = "## Mixed precision (CPU)"
MODELS = {  # name -> (config overrides, image side)
    "tiny": ([], 256),
    "resnet18": (["~experiment", "backbone=resnet18", "backbone.weights=null", "model.transform.min_size=384",
                  "model.transform.max_size=512"], 384),
}


def build(name: str) -> tuple[torch.nn.Module, list[torch.Tensor], list[dict]]:
    overrides, side = MODELS[name]
    cfg = compose_project_config(overrides)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, side, side + side // 4, generator=generator) for _ in range(2)]
    targets = []
    for _ in images:
        xy = torch.rand(3, 2, generator=generator) * side * 0.6
        wh = 24 + torch.rand(3, 2, generator=generator) * side * 0.35
        targets.append({"boxes": torch.cat((xy, xy + wh), 1), "labels": torch.randint(1, 4, (3,), generator=generator)})
    return model, images, targets


def precision(name: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()


def train_step(model, optimizer, images, targets, kind):
    model.train()
    with precision(kind):
        loss = model(images, targets).losses["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def inference(model, images, kind):
    model.eval()
    with torch.inference_mode(), precision(kind):
        model(images)


def measure(name: str, repeats: int) -> list[dict]:
    model, images, targets = build(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    cpu = torch.device("cpu")
    rows = []
    for mode in ("train step", "inference"):
        def call(kind, mode=mode):
            if mode == "train step":
                return train_step(model, optimizer, images, targets, kind)
            return inference(model, images, kind)
        for kind in ("fp32", "bf16"):  # warm-up: oneDNN picks its kernels on the first calls
            call(kind)
            call(kind)
        times = {"fp32": [], "bf16": []}
        cpu_times = {"fp32": [], "bf16": []}
        for _ in range(repeats):  # interleaved: both see the same machine load
            for kind in ("fp32", "bf16"):
                wall, process = timed(lambda kind=kind: call(kind), cpu)
                times[kind].append(wall)
                cpu_times[kind].append(process)
        rows.append({"model": name, "mode": mode, "times": times, "cpu": cpu_times})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | what | float32 s (median [min, max]) | bfloat16 s (median [min, max]) | float32 / bfloat16 | "
             "CPU s fp32 / bf16 |", "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        f, b = row["times"]["fp32"], row["times"]["bf16"]
        cf, cb = statistics.median(row["cpu"]["fp32"]), statistics.median(row["cpu"]["bf16"])
        lines.append(f"| {row['model']} | {row['mode']} | {statistics.median(f):.3f} [{min(f):.3f}, {max(f):.3f}] | "
                     f"{statistics.median(b):.3f} [{min(b):.3f}, {max(b):.3f}] | "
                     f"{statistics.median(f) / statistics.median(b):.2f} | {cf:.3f} / {cb:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", default="tiny,resnet18")
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.models.split(",") for row in measure(name, args.repeats)]
    load = os.getloadavg()[0]
    text = (f"{SECTION}\n\n{datetime.date.today()}, `python bench/precision.py --repeats {args.repeats} "
            f"--threads {args.threads}`, {machine(torch.device('cpu'))}, load average {load:.1f}.\n\n{table(rows)}\n")
    print(text)
    if args.record:
        record(SECTION, text)


if __name__ == "__main__":
    main()
