"""One raccoon epoch eager and with compiled training: what compilation costs a real run on this machine.

Runs ``python src/train.py experiment=raccoon_mobilenet trainer.max_epochs=1`` (MobileNetV2 from the
ImageNet weights, 160 training images in batches of 4: 40 steps, then a validation over the 40 val
images and the test on the best checkpoint) as subprocesses, once with the training rewrite as
train.py runs it (``callbacks.training_speed.compile=false``, the default) and once with compile on
(``compile=true``: backbone, box head and predictor through Inductor with automatic dynamic shapes,
``frcnn.modeling.compile``) twice: with an empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR`` a new
directory: a user's first run) and again with the cache that run left (a rerun of the same shapes,
which loads the compiled kernels from disk). Each training step's loss row is flushed to the CSV log as it is
logged, and its arrival is stamped from the outside (polled every 0.05 s): the time of the first
step (imports, data, model, and with compile the first compilation) and the median time between
later steps (where a recompilation for another image size shows as one long interval) say what
compiling costs and what it saves, and the whole run's wall clock what one epoch pays. The runs
alternate (``--rounds``: eager, cold, warm, then warm (the previous cold run's cache), cold, eager...)
so that a change of load hits all.

Needs ``../shared`` (the raccoon photos and the MobileNetV2 weights; ``make data`` fetches them
elsewhere: README "Data").

    .venv/bin/python bench/compile_epoch.py [--rounds 1] [--record]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, record

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Compiled training over one raccoon epoch"
BASE = ["experiment=raccoon_mobilenet", "trainer.max_epochs=1", "trainer.log_every_n_steps=1",
        "logger.csv.flush_logs_every_n_steps=1", "data.num_workers=2"]


def train_steps(path: Path) -> list[int]:
    """The global steps of the training-loss rows logged so far."""
    if not path.is_file():
        return []
    with path.open() as file:
        return [int(r["step"]) for r in csv.DictReader(file) if r.get("train/loss") not in (None, "")]


def run(kind: str, work: Path, timeout: float, cache: Path) -> dict:
    """kind: "eager", "cold" or "warm" (compiled, with the Inductor cache ``cache`` as it is)."""
    compile_on = kind != "eager"
    run_dir = work / f"{kind}_{sum(p.is_dir() for p in work.glob(kind + '_*'))}"
    metrics = run_dir / "csv" / "version_0" / "metrics.csv"
    command = [sys.executable, str(ROOT / "src" / "train.py"), f"hydra.run.dir={run_dir}", *BASE,
               f"callbacks.training_speed.compile={'true' if compile_on else 'false'}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stamps: dict[int, float] = {}
    start = time.perf_counter()
    with (work / f"{run_dir.name}.log").open("w") as log:
        env = dict(os.environ, WANDB_MODE="offline", TORCHINDUCTOR_CACHE_DIR=str(cache))
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            if time.perf_counter() - start > timeout:
                proc.kill()
                break
            now = time.perf_counter() - start
            for step in train_steps(metrics):
                stamps.setdefault(step, now)
            time.sleep(0.05)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times = [stamps[s] for s in sorted(stamps)]
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {
        "kind": kind, "returncode": proc.returncode, "wall_s": wall, "steps": len(times),
        "first_step_s": times[0] if times else float("nan"),
        "median_step_s": statistics.median(gaps) if gaps else float("nan"),
        "mean_step_s": (times[-1] - times[0]) / len(gaps) if gaps else float("nan"),  # recompilations included
        "longest_later_step_s": max(gaps) if gaps else float("nan"),
        "after_last_step_s": wall - times[-1] if times else float("nan"),
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "log": str(work / f"{run_dir.name}.log"),
    }


def markdown(results: list[dict], rounds: int) -> str:
    lines = [
        SECTION, "",
        f"{datetime.date.today().isoformat()}, `.venv/bin/python bench/compile_epoch.py --rounds {rounds} --record`, "
        f"{machine_line()}. " + " ".join(__doc__.split("\n\n")[1].split()).replace("``", "`"), "",
        "| run | steps | first step logged at s | median s / later step | mean s / later step | longest later step s "
        "| after the last step s "
        "| whole run s | CPU s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        name = {"eager": "eager", "cold": "compiled, empty cache", "warm": "compiled, cache of the previous run"}[r["kind"]]
        lines.append(f"| {name} | {r['steps']} | {r['first_step_s']:.0f} | "
                     f"{r['median_step_s']:.2f} | {r['mean_step_s']:.2f} | {r['longest_later_step_s']:.1f} | {r['after_last_step_s']:.0f} | "
                     f"{r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    med = {k: {f: statistics.median(r[f] for r in results if r["kind"] == k) for f in ("wall_s", "median_step_s")}
           for k in ("eager", "cold", "warm")}
    e, c, w = med["eager"], med["cold"], med["warm"]
    saved = e["median_step_s"] - c["median_step_s"]
    lines += ["", f"Medians: one epoch takes {e['wall_s']:.0f} s eager, {c['wall_s']:.0f} s compiled from an empty cache "
              f"({c['wall_s'] - e['wall_s']:+.0f} s), {w['wall_s']:.0f} s compiled from a warm one "
              f"({w['wall_s'] - e['wall_s']:+.0f} s); a compiled step takes {c['median_step_s']:.2f} s "
              f"(warm cache {w['median_step_s']:.2f} s) against {e['median_step_s']:.2f} s eager"
              + (f", so the first compiled run pays back after ~{(c['wall_s'] - e['wall_s']) / saved:.0f} more steps if "
                 "nothing recompiles." if saved > 0 else
                 ": compiled steps are no faster here, so compiling does not pay back on this machine at any length.")]
    return "\n".join(lines) + "\n"


def machine_line() -> str:
    import torch

    return machine(torch.device("cpu"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1, help="eager and compiled runs each, alternating")
    parser.add_argument("--timeout", type=float, default=1800.0, help="kill a run after this many seconds")
    parser.add_argument("--record", action="store_true", help="write the table into bench/README.md")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="frcnn_compile_epoch_"))
    results, last_cold = [], None
    for i in range(args.rounds):
        for kind in ("eager", "cold", "warm") if i % 2 == 0 else ("warm", "cold", "eager"):
            if kind == "cold":
                last_cold = work / f"inductor_cache_{i}"  # a new, empty directory: the run fills it
            r = run(kind, work, args.timeout, last_cold or work / "unused_cache")
            print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
            if r["returncode"] != 0:
                sys.exit(f"train.py failed ({r['returncode']}): see {r['log']}")
            results.append(r)
    text = markdown(results, args.rounds)
    print("\n" + text)
    if args.record:
        record(SECTION, text)


if __name__ == "__main__":
    main()
