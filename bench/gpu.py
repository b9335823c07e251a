"""ResNet-50 FPN on one GPU, ours beside torchvision's ``fasterrcnn_resnet50_fpn`` (issue 17).

Both models hold the same weights (torchvision's random init, BatchNorm calibrated then frozen,
imported into ours: ``_gpu_pair.py``) and are checked to agree on a batch first. Then, per mode
(fp32; bf16-mixed; bf16 + channels-last; bf16 + channels-last + torch.compile of the backbone), the
two models alternate: training steps (forward + backward + SGD with lr 0, batch ``--batch`` of
``--size`` images) and inference steps, warm-up rounds untimed; images/s from CUDA-synchronised wall
time, medians over rounds; peak GPU memory per step (max_memory_allocated above the step's start).
Compile time is reported on its own. Last, the data loader's images/s with all the machine's cores
(synthetic shapes JPEGs of 800..1333 px, the real decode + augmentation + collate path), beside the
training images/s: the GPU never waits when the loader is faster.

    python bench/gpu.py --out gpu_figures            # on a GPU machine (bench/gpu_check.sh runs it)
    python bench/gpu.py --device cpu --smoke         # a tiny CPU run of the same code (no figures)

Targets (H100/H200-class, 800 px, bf16): training >= 40 images/s, inference >= 100 images/s, and
>= 1.2x torchvision's in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _gpu_pair import agreement, build_pair, synthetic_batch

MODES = {  # name -> (autocast dtype or None, channels-last, compile)
    "fp32": (None, False, False),
    "bf16": (torch.bfloat16, False, False),
    "bf16+channels_last": (torch.bfloat16, True, False),
    "bf16+channels_last+compile": (torch.bfloat16, True, True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_of(model, output) -> torch.Tensor:
    return output.losses["loss"] if hasattr(output, "losses") else sum(output.values())


def timed_step(model, images, targets, train: bool, dtype, device) -> tuple[float, float]:
    """-> (seconds, peak MB above the start) of one step."""
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    if train:
        model.train()
        with autocast:
            loss = loss_of(model, model(images, targets))
        loss.backward()
        model.optimizer.step()
        model.optimizer.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode(), autocast:
            model(images)
    sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return seconds, peak


def prepare(model, channels_last: bool, compile_backbone: bool) -> None:
    """Apply a mode's memory format and compilation (its cost shows in the first step), and a fresh
    SGD with lr 0 (the update's arithmetic runs, the weights and hence the work stay the same)."""
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    if compile_backbone and not getattr(model, "_compiled", False):
        model.backbone = torch.compile(model.backbone)
        model._compiled = True
    model.optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)


def run_mode(name, pair, args, device) -> dict:
    dtype, channels_last, compile_backbone = MODES[name]
    results = {}
    for model in pair.values():
        prepare(model, channels_last, compile_backbone)
    compile_s = {}
    for step in range(args.warmup + args.steps):
        images, targets = synthetic_batch(args.batch, args.size[0], args.size[1], seed=step, device=device)
        order = list(pair.items()) if step % 2 == 0 else list(pair.items())[::-1]
        for train in (True, False):
            for label, model in order:
                seconds, peak = timed_step(model, images, targets, train, dtype, device)
                if step == 0 and compile_backbone:
                    compile_s[f"{label} {'train' if train else 'infer'}"] = seconds  # includes compilation
                if step >= args.warmup:
                    entry = results.setdefault(label, {"train_s": [], "infer_s": [], "train_mb": [], "infer_mb": []})
                    entry["train_s" if train else "infer_s"].append(seconds)
                    entry["train_mb" if train else "infer_mb"].append(peak)
    summary = {}
    for label, entry in results.items():
        summary[label] = {
            "train_img_s": args.batch / statistics.median(entry["train_s"]),
            "infer_img_s": args.batch / statistics.median(entry["infer_s"]),
            "train_peak_mb": max(entry["train_mb"]),
            "infer_peak_mb": max(entry["infer_mb"]),
        }
    summary["ratio"] = {k: summary["ours"][k] / summary["torchvision"][k] for k in ("train_img_s", "infer_img_s")}
    summary["first_step_s_with_compile"] = compile_s
    return summary


def loader_throughput(args) -> float:
    """Images/s of the real data path (decode, augmentation, collate) with every core as a worker."""
    import tempfile

    from torch.utils.data import DataLoader

    from frcnn.data import (
        Augmentation,
        DetectionDataset,
        ShapesGenerator,
        ShapesSource,
        collate_detection,
        load_split,
    )

    root = Path(tempfile.mkdtemp()) / "shapes"
    generator = ShapesGenerator(root, num_train=args.loader_images, num_val=4, min_image_size=args.size[0],
                                max_image_size=args.size[1], seed=0)
    records, _ = load_split(ShapesSource(generator, "train"), "header")
    dataset = DetectionDataset(records, Augmentation(hflip=0.5))
    workers = os.cpu_count() or 1
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=workers, collate_fn=collate_detection)
    next(iter(loader))  # workers started
    start, count = time.perf_counter(), 0
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1333), metavar=("MIN", "MAX"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--loader-images", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1 step, no compile (checks the code runs)")
    parser.add_argument("--out", type=Path, help="folder for gpu_figures.json")
    args = parser.parse_args()
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup, args.loader_images = (128, 160), 2, 1, 1, 8
        args.modes = [m for m in args.modes if "compile" not in m]
    device = torch.device(args.device)
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "size": args.size, "batch": args.batch}
    ours, theirs = build_pair(*args.size, device)
    images, _ = synthetic_batch(2, args.size[0], args.size[1], seed=1000, device=device)
    figures["agreement"] = agreement(ours, theirs, images)
    print("agreement:", figures["agreement"], flush=True)
    pair = {"ours": ours, "torchvision": theirs}
    for mode in args.modes:
        figures[mode] = run_mode(mode, pair, args, device)
        print(mode, json.dumps(figures[mode]), flush=True)
    figures["loader_img_s"] = loader_throughput(args)
    print("data loader images/s with", os.cpu_count(), "workers:", round(figures["loader_img_s"], 1), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_figures.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
