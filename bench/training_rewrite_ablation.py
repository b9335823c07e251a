"""Each part of the training rewrite on its own (``frcnn.layers.training_rewrite``), against
torchvision's twin: which switch of ``conf/callbacks/training_speed.yaml`` buys what.

Variants of ours, from the benchmark's model of one configuration (``_vs_pairs.py``, same weights):
``dense`` (the model as built, the RPN head's dense backward), ``sparse`` (+ the sparse RPN
backward, the default of ``RPNHead``), ``fold`` (+ frozen BatchNorm folded at forward time), ``cl``
(+ channels-last), ``fold_cl`` (+ both), ``fold_cl_reuse`` (+ the large fully connected layers'
weight gradients in reused memory, ``frcnn.layers.reused_grad``: everything, what train.py runs),
and ``tv`` (torchvision). Training steps (forward + backward + SGD at lr 0), interleaved, the order
reversed every round; medians after the first round of wall and process CPU time (and its system
part), the minimum wall time, and the median minor page faults per step (fresh memory the kernel
maps on first touch).

    .venv/bin/python bench/training_rewrite_ablation.py resnet50_fpn --steps 7
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time

import torch
from _vs_data import batch
from _vs_pairs import CONFIGS, Settings

from frcnn.layers.training_rewrite import optimize_for_training

VARIANTS = ["dense", "sparse", "fold", "cl", "fold_cl", "fold_cl_reuse", "fold_cl_reuse_wino", "tv"]


def variant(pair, name: str) -> torch.nn.Module:
    if name == "tv":
        return pair.theirs
    return optimize_for_training(copy.deepcopy(pair.ours), fold_frozen_bn="fold" in name,
                                 channels_last="cl" in name, sparse_rpn_backward=name != "dense",
                                 reuse_grad_memory="reuse" in name, winograd="wino" in name)


def train_step(model, optimizer, images, targets) -> None:
    model.train()
    out = model(images, targets)
    loss = out.losses["loss"] if hasattr(out, "losses") else sum(out.values())  # ours / torchvision
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    parser.add_argument("--image-size", type=int, help="side of the square input images (default: per config)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    pair = CONFIGS[args.config](Settings(image_size=args.image_size))
    models = {name: variant(pair, name) for name in args.variants}
    optimizers = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
                  for k, m in models.items()}
    wall, cpu, faults, system = ({k: [] for k in models} for _ in range(4))
    for i in range(args.steps):
        images, targets = batch(pair.settings.image_size, i, torch.device("cpu"))
        for k in args.variants if i % 2 == 0 else args.variants[::-1]:
            usage, start, start_cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
            train_step(models[k], optimizers[k], images, targets)
            wall[k].append(time.perf_counter() - start)
            cpu[k].append(time.process_time() - start_cpu)
            after = resource.getrusage(resource.RUSAGE_SELF)
            faults[k].append(after.ru_minflt - usage.ru_minflt)
            system[k].append(after.ru_stime - usage.ru_stime)
    print(f"{args.config}, {args.steps} rounds, load average {os.getloadavg()[0]:.1f}: ", end="")
    print(" | ".join(f"{k}: wall {statistics.median(wall[k][1:]):.2f} s (min {min(wall[k][1:]):.2f}), "
                     f"CPU {statistics.median(cpu[k][1:]):.2f} s (system {statistics.median(system[k][1:]):.3f} s), "
                     f"{statistics.median(faults[k][1:]):.0f} page faults" for k in models), flush=True)


if __name__ == "__main__":
    main()
