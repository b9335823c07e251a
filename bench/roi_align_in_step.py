"""RoIAlign's backward inside real training steps: ours against ours as it was at a git commit.

``bench/roi_align_variants.py`` times RoIAlign on its own, with the caches warm from the previous
repeat; inside a training step the pooled gradient and the maps come cold from the box head's and
the FPN's backward, and the chunk sizes that win on their own lose there. This benchmark runs
ours' training steps of ``bench/vs_torchvision.py``'s configurations (the training rewrite of
train.py, SGD at lr 0, the seeded synthetic batches) and swaps only the RoIAlign backward
(``_SeparableBilinear._backward``) between ours and the one at ``--baseline`` (the module loaded
from ``git show``, its backward run on the current forward's saved context), alternately first.
Per step: the milliseconds inside that backward (a clock around it), and the whole step's wall
time; medians over the rounds after the first, [min, max].

    .venv/bin/python bench/roi_align_in_step.py --baseline 1282cb4 [--rounds 9] [--record]

Cases: each configuration at its benchmark image size, and FPN at 800 px (2 x 800 x 800 images,
P2 200 x 200: a real training size; ~5 s a step here).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import machine, publish
from _vs_data import batch
from _vs_pairs import CONFIGS, Settings
from roi_align_variants import at_commit
from training_rewrite_ablation import train_step, variant

import frcnn.layers.roi_align as roi_align_module

SECTION = "## RoIAlign backward by windows"
CASES = [("mobilenet_v2", None), ("resnet50_c4", None), ("resnet50_fpn", None), ("resnet50_fpn", 800)]


def timed_backward(backward, clock: list[float]):
    """``backward`` (a ``_SeparableBilinear._backward``) with its seconds added to ``clock[0]``."""

    def run(ctx, grad):
        start = time.perf_counter()
        result = backward(ctx, grad)
        clock[0] += time.perf_counter() - start
        return result

    return staticmethod(run)


def run_case(config: str, image_size: int | None, baseline_backward, label: str, rounds: int) -> dict:
    """-> per variant (RoIAlign backward ms per step, step ms) lists over the rounds after the first."""
    torch.manual_seed(0)
    settings = Settings(image_size=image_size) if image_size else Settings()
    pair = CONFIGS[config](settings)
    model = variant(pair, "fold_cl_reuse_wino")  # train.py's training rewrite
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
    ours = roi_align_module._SeparableBilinear.__dict__["_backward"]
    clock = [0.0]
    backwards = {"ours": timed_backward(ours.__func__, clock), label: timed_backward(baseline_backward, clock)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in backwards}
    try:
        for i in range(rounds):
            images, targets = batch(pair.settings.image_size, i, torch.device("cpu"))
            names = list(backwards) if i % 2 == 0 else list(backwards)[::-1]
            for name in names:
                roi_align_module._SeparableBilinear._backward = backwards[name]
                clock[0] = 0.0
                start = time.perf_counter()
                train_step(model, optimizer, images, targets)
                times[name].append((1000 * clock[0], 1000 * (time.perf_counter() - start)))
    finally:
        roi_align_module._SeparableBilinear._backward = ours
    return {name: ts[1:] for name, ts in times.items()}, pair.settings.image_size


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} [{min(values):.1f}, {max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", required=True, help="git commit of the other roi_align.py")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args()
    baseline = at_commit(args.baseline)._SeparableBilinear._backward
    label = f"ours at {args.baseline}"
    out = [
        SECTION,
        "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/{' '.join([Path(sys.argv[0]).name, *sys.argv[1:]])}`, "
        f"{machine(torch.device('cpu'))}. Training steps of ours (train.py's training rewrite, 2 images a step) with "
        f"the RoIAlign backward of this tree or of {args.baseline}, alternately first; ms per step, median [min, max] "
        f"of {args.rounds - 1} rounds after the first.",
        "",
        f"| configuration, image side | RoIAlign backward: ours | {label} | step: ours | {label} |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for config, image_size in CASES:
        times, side = run_case(config, image_size, baseline, label, args.rounds)
        cells = [f"{config}, {side} px"]
        cells += [spread([t[0] for t in times[name]]) for name in ("ours", label)]
        cells += [spread([t[1] for t in times[name]]) for name in ("ours", label)]
        out.append("| " + " | ".join(cells) + " |")
        print(out[-1], flush=True)
    publish(SECTION, out, args.record)


if __name__ == "__main__":
    main()
