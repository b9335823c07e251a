"""train.py's ``reuse_host_memory`` (``frcnn.app.host_memory``: glibc keeps large freed blocks for
reuse) against glibc's default, on ours' training steps.

The setting is process-wide, so each measurement is a child process: ours' model of a
``bench/vs_torchvision.py`` configuration with train.py's training rewrite and optimizer (SGD at
lr 0), the seeded synthetic batches, ``--steps`` steps; the children alternate (off, on, off, on,
...) ``--repeats`` times. Per child: the median wall and process CPU time of the steps after the
first, the median minor page faults per step, and the process's maximum resident memory.

    .venv/bin/python bench/host_memory.py [--config resnet50_fpn] [--image-sizes 256 800] [--record]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _common import machine, publish

SECTION = "## Host memory reuse"
HERE = Path(__file__).resolve().parent


def child(config: str, image_size: int | None, steps: int, reuse: bool) -> dict:
    """One measurement in this process (run as ``--child``); -> its figures."""
    import resource
    import time

    import torch
    from _vs_data import batch
    from _vs_pairs import CONFIGS, Settings
    from training_rewrite_ablation import train_step, variant

    from frcnn.app.fused_sgd import SGD
    from frcnn.app.host_memory import reuse_host_memory

    threshold = reuse_host_memory() if reuse else 0
    torch.manual_seed(0)
    pair = CONFIGS[config](Settings(image_size=image_size))
    model = variant(pair, "fold_cl_reuse_wino")  # train.py's training rewrite
    optimizer = SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
    wall, cpu, faults = [], [], []
    for i in range(steps):
        images, targets = batch(pair.settings.image_size, i, torch.device("cpu"))
        before, start, start_cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), time.process_time()
        train_step(model, optimizer, images, targets)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {"threshold": threshold, "image_size": pair.settings.image_size, "wall": statistics.median(wall[1:]),
            "cpu": statistics.median(cpu[1:]), "faults": statistics.median(faults[1:]),
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="resnet50_fpn")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[256, 800])
    parser.add_argument("--image-size", type=int, help=argparse.SUPPRESS)  # a child's
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    parser.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.config, args.image_size, args.steps, args.child == "on")))
        return
    out = [
        SECTION,
        "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`, "
        f"{machine_line()}. Ours' {args.config} training steps (train.py's training rewrite and SGD, 2 images a "
        f"step), one child process per run, off and on alternating; per run the median of the {args.steps - 1} "
        "steps after the first.",
        "",
        "| image side | reuse_host_memory | wall s/step, per run | median | CPU s/step, median "
        "| minor page faults/step, median | max resident MB, median |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for size in args.image_sizes:
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        for _ in range(args.repeats):
            for mode in ("off", "on"):
                command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--config", args.config,
                           "--image-size", str(size), "--steps", str(args.steps)]
                result = subprocess.run(command, check=True, capture_output=True, text=True, cwd=HERE).stdout
                runs[mode].append(json.loads(result.strip().splitlines()[-1]))
                print(size, mode, runs[mode][-1], flush=True)
        for mode in ("off", "on"):
            rs = runs[mode]
            walls = ", ".join(format(r["wall"], ".2f") for r in rs)
            median = {key: statistics.median(r[key] for r in rs) for key in ("wall", "cpu", "faults", "max_rss_mb")}
            out.append(f"| {size} | {mode} | {walls} | {median['wall']:.2f} | {median['cpu']:.2f} "
                       f"| {median['faults']:.0f} | {median['max_rss_mb']:.0f} |")
    out.append("")
    out.append(f"With the setting, glibc's mmap threshold: {runs['on'][0]['threshold'] >> 20} MB.")
    publish(SECTION, out, args.record)


def machine_line() -> str:
    import torch

    return machine(torch.device("cpu"))


if __name__ == "__main__":
    main()
