"""Exported runtimes against eager PyTorch on this CPU (issue 11), interleaved in one process.

Per model: export time and file size; then, after checking that every runtime's detections equal
the rewritten eager model's (1e-3 px, 1e-4 score, same counts), timed rounds in which each runner
takes its turn on the same images (order rotating): per-image latency at batch 1 and images/s at
batch 4 (four images of one size: one call of the exported graph). Medians with min / max over the
rounds. Runners: eager as trained, eager with the inference rewrite (frcnn.layers.inference_rewrite), ONNX
Runtime, OpenVINO, and with ``--pt2`` the AOTInductor package (format=pt2; its compile time is the
export time of that row). Threads: ``--threads`` for all of them (torch intra-op, ORT intra-op, OpenVINO
INFERENCE_NUM_THREADS). Peak RSS: the process's high-water mark after each runner's first call,
so it only grows (a lower bound on what a runner alone needs is its own increase).

Models: the raccoon MobileNetV2 (experiment=raccoon_mobilenet, ImageNet weights from ../shared, box
layers random) at 480 / 800 px; ResNet-50 C4 and ResNet-50 FPN with random weights at 600 px.
Inputs: seeded synthetic scenes at the model's size, so the resize inside is the identity for all.
Target: the best runtime >= 1.5x the rewritten eager model's images/s at batch 4.

    .venv/bin/python bench/export.py --record                       # all models, 7 rounds
    .venv/bin/python bench/export.py --models raccoon_480 --rounds 3   # quick
    .venv/bin/python bench/export.py --rounds 3 --pt2 raccoon_480       # pt2 for one model only
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))

from _common import machine, record  # noqa: E402

from frcnn.export.onnx_export import export_onnx  # noqa: E402
from frcnn.export.pt2_export import export_pt2  # noqa: E402
from frcnn.export.runtimes import OnnxRuntimeBackend, OpenVINOBackend, Pt2Backend  # noqa: E402
from frcnn.export.verify import max_differences  # noqa: E402
from frcnn.layers.inference_rewrite import optimize_for_inference  # noqa: E402

# name -> (compose overrides, image size (H, W))
MODELS = {
    "raccoon_480": (["experiment=raccoon_mobilenet", "model.transform.min_size=480", "model.transform.max_size=800"], (480, 640)),
    "raccoon_800": (["experiment=raccoon_mobilenet", "model.transform.min_size=800", "model.transform.max_size=1333"], (800, 1066)),
    "resnet50_c4": (["~experiment", "backbone=resnet50", "backbone.weights=null", "data=voc",
                     "model.roi_heads.box_head._target_=frcnn.modeling.roi_heads.ResNetC5Head", "~model.roi_heads.box_head.hidden_dim",
                     "model.roi_heads.pooler.output_size=14"],
                    (600, 800)),
    "resnet50_fpn": (["~experiment", "model=faster_rcnn_fpn", "backbone=resnet50_fpn", "backbone.weights=null", "data=voc",
                      "model.transform.min_size=600", "model.transform.max_size=1000"], (600, 800)),
}


def build(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from frcnn.app.build import build_model

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(0)
    model = build_model(OmegaConf.to_container(cfg.model, resolve=True)).eval()
    return model, list(cfg.data.get("classes") or [f"class{k}" for k in range(1, model.num_classes + 1)])


def scenes(n: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    from tests.export.helpers import scene

    return [scene(*size, seed + i) for i in range(n)]


def bench_model(name: str, rounds: int, threads: int, folder: Path, pt2: bool = False) -> dict:
    overrides, size = MODELS[name]
    model, class_names = build(overrides)
    rewritten = optimize_for_inference(copy.deepcopy(model))
    start = time.perf_counter()
    path = export_onnx(model, folder / f"{name}.onnx", class_names[: model.num_classes], example_size=(2, 3, 320, 416))
    export_s = time.perf_counter() - start

    def eager(m):
        def run(images):
            with torch.no_grad():
                return m(images).detections
        return run

    runners = {"eager": eager(model), "eager_rewrite": eager(rewritten)}
    rss = {}
    for label, factory in (("onnxruntime", OnnxRuntimeBackend), ("openvino", OpenVINOBackend)):
        runners[label] = factory(path, threads=threads)
    pt2_s = None
    if pt2:
        start = time.perf_counter()
        package = export_pt2(model, folder / f"{name}.pt2", class_names[: model.num_classes], example_size=(2, 3, 320, 416))
        pt2_s = time.perf_counter() - start
        runners["pt2"] = Pt2Backend(package, threads=threads)
    one, four = scenes(1, size, 0), scenes(4, size, 10)
    reference = runners["eager_rewrite"](four)
    checks = {}
    for label, run in runners.items():
        checks[label] = max_differences(reference, run(four))  # raises on a count mismatch
        rss[label] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times: dict[str, dict[str, list[float]]] = {label: {"b1": [], "b4": []} for label in runners}
    labels = list(runners)
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:  # rotate who goes first
            for key, images in (("b1", one), ("b4", four)):
                t = time.perf_counter()
                runners[label](images)
                times[label][key].append(time.perf_counter() - t)
    return {"name": name, "size": size, "export_s": export_s, "pt2_s": pt2_s, "mb": path.stat().st_size / 2**20, "checks": checks,
            "rss": rss, "times": times, "detections": sum(len(d["boxes"]) for d in reference)}


def table(result: dict) -> str:
    times, base = result["times"], statistics.median(result["times"]["eager_rewrite"]["b4"])
    lines = [f"**{result['name']}** ({result['size'][0]}x{result['size'][1]} px; export {result['export_s']:.0f} s, "
             f"{result['mb']:.1f} MB" + (f"; pt2 compile {result['pt2_s']:.0f} s" if result["pt2_s"] else "")
             + f"; {result['detections']} detections on the 4 images)", "",
             "| runner | batch 1 ms/image (min-max) | batch 4 images/s (min-max) | vs eager rewrite | unpaired / max score diff | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for label, t in times.items():
        b1, b4 = [1000 * v for v in t["b1"]], [4 / v for v in t["b4"]]
        check = result["checks"][label]
        lines.append(f"| {label} | {statistics.median(b1):.0f} ({min(b1):.0f}-{max(b1):.0f}) | "
                     f"{statistics.median(b4):.2f} ({min(b4):.2f}-{max(b4):.2f}) | {base / statistics.median(t['b4']):.2f}x | "
                     f"{check['unpaired']} / {check['scores']:.1e} | {result['rss'][label]:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pt2", nargs="*", default=None, metavar="MODEL",
                        help="also compile and time format=pt2 (minutes per model): for these models, or all without names")
    parser.add_argument("--record", action="store_true", help="write the tables into bench/README.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    command = (f"python bench/export.py --models {' '.join(args.models)} --rounds {args.rounds} --threads {args.threads}"
               + ("" if args.pt2 is None else " --pt2" + "".join(f" {m}" for m in args.pt2)))
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        results = []
        for name in args.models:
            pt2 = args.pt2 is not None and (not args.pt2 or name in args.pt2)
            results.append(bench_model(name, args.rounds, args.threads, Path(folder), pt2))
            print(table(results[-1]), flush=True)
            text = "\n\n".join(
                [f"## Export\n\n{datetime.date.today()}, `{command}`, {machine(torch.device('cpu'))}, {args.threads} threads "
                 f"for every runner, load average {load_start:.1f} at the start and {os.getloadavg()[0]:.1f} after the last "
                 "model. Medians over interleaved rounds; outputs checked equal to the rewritten eager model first.",
                 *(table(r) for r in results)]
            )
            if args.record:  # after every model: a later one killed (memory) keeps the earlier tables
                record("## Export", text)
    print(text)


if __name__ == "__main__":
    main()
