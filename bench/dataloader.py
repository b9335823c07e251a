"""Images per second of the training data pipeline on coco128 (decode + flip + tensors + collate).

Builds the DataModule from conf/data/coco128.yaml exactly as training does, then times whole epochs
of ``train_dataloader()`` after one warm-up epoch (worker start-up and the page cache excluded), with
0 and 2 workers, at native size (the default: the model resizes) and with the in-loader resize to
min side 600 / max side 1000. Prints images per second (wall clock: depends on what else runs) and
CPU milliseconds per image summed over the main process and the workers (does not).

    .venv/bin/python bench/dataloader.py [--epochs 3] [--workers 0 2] [--batch-size 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / ".." / "shared"


def build(workers: int, resize: bool, batch_size: int):
    cfg = OmegaConf.create({
        "paths": {"root_dir": str(ROOT), "data_dir": str(ROOT / "data"), "shared_dir": str(SHARED),
                  "output_dir": str(ROOT / "outputs")},
        "data": OmegaConf.load(ROOT / "conf" / "data" / "coco128.yaml"),
    })
    cfg.data.num_workers = workers
    cfg.data.batch_size = batch_size
    if resize:
        cfg.data.train_aug.resize = {"min_size": 600, "max_size": 1000}
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    return datamodule.train_dataloader()


def cpu_seconds(pids: list[int]) -> float:
    """user + system CPU time of these processes so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(loader, epochs: int) -> tuple[float, float]:
    """-> (images per second of wall time, CPU milliseconds per image over the main process and workers).

    The CPU cost does not depend on what else runs on the machine; the wall-clock rate does.
    """
    for _ in loader:  # warm-up epoch: starts the (persistent) workers, fills the page cache
        pass
    workers = [w.pid for w in loader._iterator._workers] if loader.num_workers else []  # persistent workers
    pids = [os.getpid(), *workers]
    count, cpu_start, start = 0, cpu_seconds(pids), time.perf_counter()
    for _ in range(epochs):
        for images, _targets in loader:
            count += len(images)
    wall, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu_start
    return count / wall, 1000 * cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of 128 images, after one warm-up")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    print(f"coco128 training pipeline, batch size {args.batch_size}, {args.epochs} timed epochs, "
          f"{torch.get_num_threads()} torch threads, {platform.processor() or platform.machine()}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    print("| size | workers | images/s | CPU ms / image |")
    print("| --- | ---: | ---: | ---: |")
    for resize in (False, True):
        for workers in args.workers:
            rate, cpu_ms = measure(build(workers, resize, args.batch_size), args.epochs)
            size = "resize 600/1000 in loader" if resize else "native (model resizes)"
            print(f"| {size} | {workers} | {rate:.0f} | {cpu_ms:.1f} |", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
