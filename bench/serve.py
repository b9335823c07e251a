"""Load test of the server: 8 concurrent clients, 200 requests, batching on and off.

Starts ``src/serve.py`` twice as a user does (subprocesses on 127.0.0.1: ``batching.max_batch_size=8``
and ``=1``), then sends the same load to each, interleaved over ``--rounds`` rounds (the order flips
every round), and reports per mode the median over rounds (and the range) of p50 / p95 latency and
images/s. Every answer must be HTTP 200 and equal ``Detector.predict`` on the same image (to float
rounding); any other answer fails the run. Loopback only, bounded in count and time.

    .venv/bin/python bench/serve.py                       # print the figures
    .venv/bin/python bench/serve.py --record              # and put them in bench/README.md
    .venv/bin/python bench/serve.py --ckpt best.ckpt      # another checkpoint (default: the default run's
                                                          # model, untrained: speed does not depend on weights)
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from _common import machine, record
from _serve_load import run_load, summary
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
SECTION = "## Serving"


def default_checkpoint(path: Path) -> Path:
    """The default run's detector (conf/experiment/shapes_fast.yaml), seeded, untrained, saved as a
    checkpoint that ``module_from_checkpoint`` reads (plain state dict + hyper-parameters)."""
    from hydra import compose, initialize_config_dir

    from frcnn.app.build import build_model
    from frcnn.app.module import DetectionModule

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[f"paths.output_dir={path.parent}", f"paths.log_dir={path.parent}"])
    torch.manual_seed(0)
    module = DetectionModule(build_model(cfg.model), class_names=["circle", "square", "triangle"],
                             model_config=cfg.model)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def bench_images(count: int, width: int, height: int) -> list[bytes]:
    """``count`` JPEGs of one size (so that batching can group them), synthetic shapes."""
    from frcnn.data.shapes import render_image

    images = []
    for seed in range(count):
        pixels, _, _ = render_image(np.random.default_rng(100 + seed), width, height, 3, 20, 0.5)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def start_server(ckpt: Path, max_batch_size: int, threads: int, run_dir: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "src" / "serve.py"), f"ckpt_path={ckpt}", f"port={port}", "device=cpu",
         f"batching.max_batch_size={max_batch_size}", f"torch_threads={threads}", "log_level=warning",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"serve.py did not start: {proc.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.3)


def spread(values: list[float], digits: int) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, help="a training checkpoint (default: the default run's model, untrained)")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT of the images sent")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of each server")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on each load run")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()

    from frcnn import Detector

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    ckpt = args.ckpt or default_checkpoint(tmp / "default_run_untrained.ckpt")
    width, height = (int(v) for v in args.size.split("x"))
    images = bench_images(8, width, height)
    torch.set_num_threads(args.threads)
    detector = Detector.from_checkpoint(ckpt, device="cpu", batch_size=1)
    expected = [detector.predict(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).to_dict() for data in images]

    modes = {"batching on (max 8, 5 ms)": 8, "batching off": 1}
    servers = {mode: start_server(ckpt, size, args.threads, tmp / f"run_{size}") for mode, size in modes.items()}
    results: dict[str, list[dict]] = {mode: [] for mode in modes}
    failures: list[str] = []
    load_before = os.getloadavg()[0]
    try:
        for _, port in servers.values():  # warm-up: first calls initialise the libraries
            run_load(port, images, expected, 2 * args.clients, args.clients, args.max_seconds)
        for r in range(args.rounds):
            for mode in (list(modes) if r % 2 == 0 else list(reversed(modes))):
                result = run_load(servers[mode][1], images, expected, args.requests, args.clients, args.max_seconds)
                failures += [f"{mode}, round {r}: {f}" for f in result["failures"]]
                results[mode].append(summary(result))
                print(mode, r, {k: round(v, 2) for k, v in results[mode][-1].items()}, flush=True)
        infos = {mode: json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30).read())
                 for mode, (_, port) in servers.items()}
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    load_after = os.getloadavg()[0]

    rows = [f"| {mode} | {spread([r['p50'] for r in rs], 1)} | {spread([r['p95'] for r in rs], 1)} | "
            f"{spread([r['images_s'] for r in rs], 1)} | {statistics.median(r['mean_batch'] for r in rs):.2f} |"
            for mode, rs in results.items()]
    on, off = (statistics.median(r["images_s"] for r in rs) for rs in results.values())
    model = infos[next(iter(modes))]["model"]
    markdown = "\n".join([
        SECTION, "",
        f"{datetime.date.today()}, `.venv/bin/python bench/serve.py {' '.join(sys.argv[1:])}`, {machine(torch.device('cpu'))}.",
        f"`src/serve.py` on 127.0.0.1 ({model}, {'checkpoint ' + ckpt.name if args.ckpt else 'the default run model, untrained'}, "
        f"torch_threads={args.threads}), {args.clients} concurrent keep-alive clients, {args.requests} requests per round "
        f"of {width}x{height} JPEGs, {args.rounds} rounds interleaved; median over rounds (min-max). The clients run on "
        f"the same machine and share its cores. Load average {load_before:.1f} before, {load_after:.1f} after.",
        f"Every answer was HTTP 200 and equal to `Detector.predict` on the same image: {'yes' if not failures else 'NO'} "
        f"({sum(len(rs) for rs in results.values()) * args.requests} answers checked).", "",
        "| mode | p50 ms | p95 ms | images/s | mean batch |", "| --- | ---: | ---: | ---: | ---: |", *rows, "",
        f"Batching on / off: {on / off:.2f}x the throughput.",
    ])
    print(markdown)
    for failure in failures[:20]:
        print("FAILURE:", failure)
    if args.record and not failures:
        record(SECTION, markdown)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
