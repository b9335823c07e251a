"""Our Faster R-CNN against ``torchvision.models.detection.FasterRCNN`` on the same work, in one process.

Each configuration (``_vs_pairs.py``) builds one architecture as ours and as its torchvision twin
(``frcnn.interop.torchvision_twin``: torchvision's FasterRCNN with copies of our weights and
settings), so both compute the same function (checked on a batch: proposals and detections are
compared). Two warm-up rounds (the first counts FLOPs and gives the outputs compared, the second is
profiled), then timed rounds (``_vs_runner.py``): both models train, then both infer, who goes
first alternating, then a large matmul gives the machine's GEMM rate under the same load. Medians
are reported, with min / max and process CPU time (``_vs_report.py``).

Per model and configuration: images/s in training (forward + backward + SGD step) and inference,
peak step memory, FLOPs per step (``torch.utils.flop_counter.FlopCounterMode``) and the share of
the GEMM rate they reach, a per-stage time breakdown (``_stages.py``) and the heaviest ops.
Ours trains with the training rewrite of train.py's TrainingSpeed callback (frozen BatchNorm
folded at forward time, channels-last, the sparse RPN-head backward, reused fc6 gradient memory,
Winograd 3 x 3 convolutions; ``--no-training-rewrite``
for the model as built) and, with ``--compile``, its backbone, box head and predictor compiled
(``frcnn.modeling.compile``; the compilation is timed apart, on a first step before the rounds).

Targets (issue 15, 2-core CPU): train ours / torchvision >= 1.5, inference >= 1.10, peak memory
ours / torchvision <= 1.0, training FLOP/s >= 70 % (C4) / 60 % (FPN) of the GEMM rate, with the
noise check (the GEMM rate met just before each model's training step, ours / torchvision)
within 5 %, and on Linux the hypervisor's steal during each model's training steps (``/proc/stat``,
medians) within 5 points of each other.

Inputs: seeded synthetic images (``_vs_data.py``), two per step, already at the configured size.
Backbone BatchNorm is frozen; ResNet-50 has no pretrained weights offline, so its statistics are
calibrated on synthetic images. MobileNetV2 uses ``../shared/weights/mobilenet_v2_imagenet_int8derived.pth``
when present. SGD runs with lr 0: every step does the optimizer's arithmetic but the weights, hence
the work, stay the same from step to step; weight decay 0 unless ``--weight-decay`` (then the run
is recorded in a section of its own). Each model steps the SGD its training code builds (ours: the
fused step of ``frcnn.app.fused_sgd``).

    .venv/bin/python bench/vs_torchvision.py --record     # 3 configs: ~6 min on 2 idle cores, ~15 loaded
    .venv/bin/python bench/vs_torchvision.py --steps 7 --retries 2 --record   # a noisy run again, up to twice
    .venv/bin/python bench/vs_torchvision.py --configs mobilenet_v2 --steps 5
    .venv/bin/python bench/vs_torchvision.py --configs resnet50_fpn --compile --steps 5
    .venv/bin/python bench/vs_torchvision.py --device cuda --steps 20 --warmup 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Sequence

import torch
from _common import GemmRate, machine, record
from _vs_pairs import CONFIGS, Settings
from _vs_report import noise_check, report, steady
from _vs_runner import Options, run_config

from frcnn.app.host_memory import reuse_host_memory

SECTION = "## vs torchvision"
METHOD = (
    "Training step = forward + backward + SGD (lr 0, momentum 0.9, weight decay {weight_decay:g}; each model's own: "
    "torchvision's reference scripts' `torch.optim.SGD`, our conf/optimizer/sgd.yaml's `frcnn.app.fused_sgd.SGD`); inference = forward under inference_mode{rewrite}. Each round runs "
    "ours and torchvision alternately first. Peak MB: live bytes above the step's start (CPU: the profiler's "
    "allocator records of a step profiled for nothing else, as recording shapes keeps small tensors alive; CUDA: "
    "max_memory_allocated). FLOPs: FlopCounterMode (matmuls and convolutions; RoIAlign, "
    "NMS and elementwise ops are not counted), over the median step time and the GEMM rate of the same rounds. "
    "Stage times: medians over the timed steps of clocks started and stopped by forward hooks; backward is one "
    "interval there, split across stages in the proportions of one profiled step (each backward op goes to the "
    "stage whose forward op it differentiates); `sample/loss/postprocess` is the rest of the RoI heads (matching, "
    "sampling, losses, detections). The heaviest ops come from that profiled step. The backbone forward is the "
    "same module on the same input in both models (in training; in inference too without the rewrite), so its "
    "ours / torchvision ratio (printed per configuration) shows the noise. The whole run took {minutes:.1f} min. "
    "RoIAlign alone, ours against torchvision's and a proposed replacement: `bench/roi_align_variants.py`. "
    "{training}"
)
TRAINING = (
    "Ours trains with the training rewrite of train.py (`frcnn.app.callbacks.TrainingSpeed`: frozen BatchNorm folded "
    "into the convolutions at forward time, channels-last, the RPN head's backward only at the sampled anchors, fc6's "
    "weight gradient in reused memory, the FPN's and RPN head's 3 x 3 convolutions on maps >= 32 x 32 by Winograd "
    "F(4 x 4, 3 x 3), `frcnn.layers.winograd`)"
)
REWRITE = (
    ", ours with the inference rewrite of eval.py / predict.py (`frcnn.layers.inference_rewrite`: BatchNorm folded "
    "into the convolutions, channels-last weights) on a copy of the same weights"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=3, help="timed rounds (each: both models, train + infer)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds (>= 2): the first counts FLOPs, the last is profiled")
    parser.add_argument("--image-size", type=int, help="side of the square input images (default: per config)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rois-per-image", type=int, help="R-CNN training RoIs per image (default: per config)")
    parser.add_argument("--test-proposals", type=int, help="RPN proposals per image at test (default: per config)")
    parser.add_argument("--record", action="store_true", help="write the tables into bench/README.md")
    parser.add_argument("--no-inference-rewrite", dest="inference_rewrite", action="store_false",
                        help="ours infers with the training model as is (default: BatchNorm folded + channels-last)")
    parser.add_argument("--no-training-rewrite", dest="training_rewrite", action="store_false",
                        help="ours trains as built (default: the TrainingSpeed callback's rewrite)")
    parser.add_argument("--compile", action="store_true", help="ours trains with torch.compile (Inductor)")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="both SGDs' weight decay (default 0: the recorded figures; train.py uses 5e-4, "
                             "torchvision's reference scripts 1e-4)")
    parser.add_argument("--reuse-host-memory", action="store_true",
                        help="glibc keeps large freed blocks (train.py's reuse_host_memory) for the whole process, "
                             "both models (default: glibc's own behaviour)")
    parser.add_argument("--retries", type=int, default=0,
                        help="run a configuration again, up to this many times, while its noise check fails "
                             "(the discarded runs' checks are reported)")
    args = parser.parse_args(argv)
    if args.warmup < 2 or args.steps < 1:
        parser.error("need --warmup >= 2 and --steps >= 1")
    return args


def training_method(args: argparse.Namespace) -> str:
    if not args.training_rewrite:
        text = "Ours trains as built (no training rewrite)"
    else:
        text = TRAINING
    if args.compile:
        text += ", its backbone, box head and predictor compiled (torch.compile, Inductor, automatic dynamic shapes)"
    return text + "."


def _run_steady(name: str, settings: Settings, gemm: GemmRate, options: Options, args: argparse.Namespace) -> str:
    """One configuration's report; run again, up to ``args.retries`` times, while the noise check
    fails (the discarded runs' checks are appended)."""
    discarded = []
    for attempt in range(args.retries + 1):
        print(f"{name}: building", flush=True)
        torch.manual_seed(0)  # the same weights in every attempt
        pair = CONFIGS[name](settings)
        results, gemm_rates, check = run_config(pair, args.steps, args.warmup, gemm, options)
        if steady(results["ours"], results["torchvision"]) or attempt == args.retries:
            text = report(pair, results, gemm_rates, check, options)
            if discarded:
                text += f"\n\nRuns discarded before this one ({len(discarded)}), their noise checks: " + " ".join(discarded)
            return text
        discarded.append(noise_check(results["ours"], results["torchvision"], options))
        print(f"  {discarded[-1]}\n  run again ({attempt + 1} of {args.retries})", flush=True)
        del pair, results
    raise AssertionError("unreachable: the last attempt returns")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.reuse_host_memory:
        reuse_host_memory()
    device = torch.device(args.device)
    torch.manual_seed(0)
    settings = Settings(args.image_size, device, args.rois_per_image, args.test_proposals)
    gemm = GemmRate(device)

    sections = []
    start, load_before = time.perf_counter(), os.getloadavg()[0]
    options = Options(args.inference_rewrite, args.training_rewrite, args.compile, args.weight_decay)
    for name in args.configs:
        sections.append(_run_steady(name, settings, gemm, options, args))
        print("\n" + sections[-1] + "\n", flush=True)

    command = " ".join([".venv/bin/python", *sys.argv])
    method = METHOD.format(rewrite=REWRITE if args.inference_rewrite else ", ours without the inference rewrite",
                           minutes=(time.perf_counter() - start) / 60, training=training_method(args),
                           weight_decay=args.weight_decay)
    if args.reuse_host_memory:
        method += (" The process keeps glibc's large freed blocks for reuse (train.py's `reuse_host_memory`, "
                   "`frcnn.app.host_memory`), for both models: neither page-faults its large tensors in every step.")
    section = SECTION + (", compiled training" if args.compile else "")  # its own section: both are kept
    if args.weight_decay:
        section += f", weight decay {args.weight_decay:g}"
    if args.reuse_host_memory:
        section += ", host memory reused"
    markdown = "\n".join([
        section, "",
        f"{datetime.date.today().isoformat()}, `{command}`, {machine(device)}. Timings interleaved, medians and "
        f"the CPU-time cross-check, as the machine may be shared: load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after.", "",
        method, "", "\n\n".join(sections), "",
    ])
    if args.record:
        record(section, markdown)


if __name__ == "__main__":
    main()
