"""How often compiled training (``frcnn.modeling.compile``) recompiles when image sizes vary.

Feeds a compiled detector (the ``tiny`` backbone: the counts depend on the shapes, not on the
network) the batches a real run gives: the raccoon photos' own sizes (read from their VOC
annotations), grouped by orientation as the data module does (``aspect_ratio_grouping``), resized
by the transform (``--min-size`` / ``--max-size``; several ``--min-size`` values: multi-scale, one
drawn per image) and padded to ``--size-divisible``. Per recompilation policy (``dynamic`` = None:
automatic dynamic, True, False) it prints the distinct padded batch sizes met, the graphs compiled,
the steps that compiled something and the time those steps took above a compiled step.

    .venv/bin/python bench/compile_recompiles.py                                # aot_eager, 40 steps
    .venv/bin/python bench/compile_recompiles.py --min-size 480 544 608 672 736 800   # multi-scale
    .venv/bin/python bench/compile_recompiles.py --backend inductor --policies none --steps 12

The aot_eager backend captures and splits the graphs as Inductor does, without code generation:
the same guards, hence (up to guards Inductor's code adds) the same recompilations, in seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.model.builders import small_faster_rcnn  # noqa: E402
from tests.shared_data import RACCOON  # noqa: E402

from frcnn.modeling.compile import compile_for_training  # noqa: E402
from frcnn.modeling.transform import InputTransform  # noqa: E402

POLICIES = {"none": None, "true": True, "false": False}


def raccoon_sizes() -> list[tuple[int, int]]:
    """(height, width) of every raccoon photo, from its annotation."""
    sizes = []
    for path in sorted((RACCOON / "Annotations").glob("*.xml")):
        size = ET.parse(path).getroot().find("size")
        sizes.append((int(size.findtext("height")), int(size.findtext("width"))))
    return sizes


def grouped_batches(sizes: list[tuple[int, int]], batch_size: int, steps: int, seed: int) -> list[list[tuple[int, int]]]:
    """``steps`` batches of ``batch_size`` sizes, each batch of one orientation (the data module's grouping)."""
    rng = random.Random(seed)
    groups = [[s for s in sizes if s[1] >= s[0]], [s for s in sizes if s[1] < s[0]]]
    batches = []
    while len(batches) < steps:
        for group in groups:
            order = rng.sample(group, len(group))
            batches += [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    rng.shuffle(batches)
    return batches[:steps]


def run_policy(policy: str, args: argparse.Namespace, batches) -> dict:
    torch._dynamo.reset()
    counters.clear()
    model = small_faster_rcnn(pooler="roi_align")
    model.transform = InputTransform(args.min_size, args.max_size, size_divisible=args.size_divisible,
                                     backbone=model.backbone)
    compile_for_training(model, dynamic=POLICIES[policy], backend=args.backend).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    padded, times, compiled_at = set(), [], []
    for step, sizes in enumerate(batches):
        images = [torch.rand(3, h, w) for h, w in sizes]
        targets = [{"boxes": torch.tensor([[0.2 * w, 0.2 * h, 0.7 * w, 0.8 * h]]), "labels": torch.tensor([1])}
                   for h, w in sizes]
        before = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        model(images, targets).losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        padded.add(tuple(model.transform(images).tensor.shape[-2:]))
        if counters["stats"]["unique_graphs"] > before:
            compiled_at.append(step)
    plain = [t for i, t in enumerate(times) if i not in compiled_at]
    step_s = statistics.median(plain) if plain else float("nan")
    return {
        "policy": policy,
        "distinct padded sizes": len(padded),
        "graphs compiled": counters["stats"]["unique_graphs"],
        "steps that compiled": compiled_at,
        "compile s (those steps above a compiled step)": round(sum(times[i] - step_s for i in compiled_at), 1),
        "compiled step s (median)": round(step_s, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-size", type=int, nargs="+", default=[480])
    parser.add_argument("--max-size", type=int, default=800)
    parser.add_argument("--size-divisible", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="one raccoon epoch at batch 4: 40 steps")
    parser.add_argument("--backend", default="aot_eager")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    batches = grouped_batches(raccoon_sizes(), args.batch_size, args.steps, args.seed)
    print(f"{len(batches)} raccoon batches of {args.batch_size}, min_size {args.min_size}, max_size {args.max_size}, "
          f"padded to a multiple of {args.size_divisible}, backend {args.backend}, "
          f"recompile_limit {torch._dynamo.config.recompile_limit}", flush=True)
    for policy in args.policies:
        print(run_policy(policy, args, batches), flush=True)


if __name__ == "__main__":
    main()
