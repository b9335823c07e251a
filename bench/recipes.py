"""The training recipes (issue 14), each measured against the plain run with the same CPU budget.

Each run trains ``src/train.py``'s way in its own process (bench/_recipes_run.py) for ``--budget``
CPU seconds of its training steps (this process's CPU time, all threads, with ``--threads`` torch
threads: other jobs on a shared machine slow the wall clock, much less the CPU time), then
evaluates on the validation split: mAP@0.5 (VOC, area), COCO map and map_50, the rare class's AP on
the long-tail data, and for test-time augmentation each variant with its seconds per image.
Suites and recipes: bench/_recipes_suites.py. Finished runs are kept in ``--results`` (one JSON
line each) and not run again, so an interrupted measurement continues where it stopped.

    .venv/bin/python bench/recipes.py --suite raccoon --seeds 0 1 2 --budget 480
    .venv/bin/python bench/recipes.py --suite longtail small --seeds 0 1 2 --budget 150
    .venv/bin/python bench/recipes.py --report [--record]      # the tables from the results file
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from _common import record
from _recipes_report import report
from _recipes_suites import ROOT, SUITES, write_longtail

RESULTS = ROOT / "outputs" / "bench_recipes" / "results.jsonl"


def run_key(suite: str, recipe: str, seed: int, budget: float, threads: int, steps: int | None = None) -> str:
    overrides, tta = SUITES[suite][recipe]
    digest = hashlib.sha1(json.dumps([overrides, tta]).encode()).hexdigest()[:8]
    return f"{suite}/{recipe}/seed{seed}/budget{budget:g}{f'_steps{steps}' if steps else ''}/threads{threads}/{digest}"


def finished(results: Path) -> dict[str, dict]:
    if not results.exists():
        return {}
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def launch(suite: str, recipe: str, seed: int, args: argparse.Namespace) -> subprocess.Popen:
    overrides, tta = SUITES[suite][recipe]
    key = run_key(suite, recipe, seed, args.budget, args.threads, args.steps)
    run_dir = args.results.parent / "runs" / key.replace("/", "_")
    spec = {"overrides": overrides, "tta": tta, "budget_s": args.budget, "threads": args.threads, "seed": seed,
            "run_dir": str(run_dir), "max_steps": args.steps}
    run_dir.mkdir(parents=True, exist_ok=True)
    log = (run_dir / "run.log").open("w")
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", OMP_NUM_THREADS=str(args.threads), HYDRA_FULL_ERROR="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_recipes_run.py"), json.dumps(spec)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.meta = {"key": key, "suite": suite, "recipe": recipe, "seed": seed, "log": run_dir / "run.log",
                 "started": time.time(), "load_start": os.getloadavg()[0]}
    return proc


def collect(proc: subprocess.Popen, args: argparse.Namespace) -> None:
    meta = proc.meta
    lines = [line for line in Path(meta["log"]).read_text().splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        print(f"FAILED {meta['key']} (exit {proc.returncode}): see {meta['log']}", flush=True)
        return
    result = json.loads(lines[-1][len("RESULT "):])
    row = {**{k: v for k, v in meta.items() if k != "log"}, "log": str(meta["log"]), "budget_s": args.budget,
           "max_steps": args.steps,
           "threads": args.threads, "wall_s": time.time() - meta["started"], "load_end": os.getloadavg()[0], **result}
    with args.results.open("a") as file:
        file.write(json.dumps(row) + "\n")
    plain = row["eval"]["none"]
    print(f"done {meta['key']}: steps {row['steps']}, train CPU {row['train_cpu_s']:.0f} s, "
          f"VOC mAP@0.5 {plain['voc_map_50']:.4f}, COCO map {plain['map']:.4f}", flush=True)


def run_all(args: argparse.Namespace) -> None:
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if {"longtail", "small"} & set(args.suite):
        print("long-tail subset:", write_longtail(), flush=True)
    done = finished(args.results)
    # Seed-major: every recipe's first seed before any second seed, so a partial run already compares.
    queue = [(suite, recipe, seed) for seed in args.seeds for suite in args.suite for recipe in SUITES[suite]
             if (not args.recipes or recipe in args.recipes)
             and run_key(suite, recipe, seed, args.budget, args.threads, args.steps) not in done]
    print(f"{len(queue)} runs to do ({len(done)} in {args.results})", flush=True)
    running: list[subprocess.Popen] = []
    while queue or running:
        while queue and len(running) < args.jobs:
            running.append(launch(*queue.pop(0), args))
        time.sleep(2)
        for proc in [p for p in running if p.poll() is not None]:
            running.remove(proc)
            collect(proc, args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", nargs="+", choices=sorted(SUITES), default=["raccoon"])
    parser.add_argument("--recipes", nargs="*", default=None, help="only these recipes of the suites")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=480.0, help="CPU seconds of training steps per run")
    parser.add_argument("--steps", type=int, default=None,
                        help="budget in optimizer steps instead (--budget then only caps the CPU seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of every run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--report", action="store_true", help="print the tables of the results file")
    parser.add_argument("--record", action="store_true", help="with --report: write them to bench/README.md")
    parser.add_argument("--section", default="## Recipes",
                        help="with --record: the README section (its heading) the tables replace")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if not args.report:
        run_all(args)
        return
    command = " ".join([".venv/bin/python", "bench/recipes.py", *map(shlex.quote, sys.argv[1:])])
    section, text = report(list(finished(args.results).values()), command, datetime.date.today(), args.section)
    print(text)
    if args.record:
        record(section, text)


if __name__ == "__main__":
    main()
