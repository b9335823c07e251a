"""The tables of bench/recipes.py: per suite and recipe, mean ± standard deviation over the seeds
(with the range), the difference to the plain run, the rare class's AP, the anchor coverage, and
test-time augmentation's variants with their cost per image."""

from __future__ import annotations

import datetime
import statistics
from collections import defaultdict

from _common import machine
from _recipes_suites import RARE, SUITES, TTA

SECTION = "## Recipes"


def spread(values: list[float], digits: int = 4) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {sd:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def grouped(rows: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """suite -> recipe -> the runs (one per seed), in bench/_recipes_suites.py's order."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    order = {key: i for i, key in enumerate((suite, recipe) for suite, recipes in SUITES.items() for recipe in recipes)}
    for row in sorted(rows, key=lambda r: (order.get((r["suite"], r["recipe"]), 1e9), r["seed"])):
        out[row["suite"]][row["recipe"]].append(row)
    return out


def recipe_table(recipes: dict[str, list[dict]], extra: dict[str, callable] | None = None) -> list[str]:
    extra = extra or {}
    plain = {r["seed"]: r["eval"]["none"]["voc_map_50"] for r in recipes.get("plain", [])}
    head = "| recipe | seeds | steps | train CPU s | mAP@0.5 VOC | Δ vs plain (same seeds) | COCO map | COCO map_50 |"
    lines = [head + "".join(f" {name} |" for name in extra),
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- |" + " --- |" * len(extra)]
    for name, runs in recipes.items():
        voc = [r["eval"]["none"]["voc_map_50"] for r in runs]
        cells = [name, str(len(runs)), f"{mean([r['steps'] for r in runs]):.0f}",
                 f"{mean([r['train_cpu_s'] for r in runs]):.0f}", spread(voc),
                 paired_delta(runs, plain) if name != "plain" else "",
                 spread([r["eval"]["none"]["map"] for r in runs]), spread([r["eval"]["none"]["map_50"] for r in runs])]
        cells += [fn(runs) for fn in extra.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired_delta(runs: list[dict], plain: dict[int, float]) -> str:
    """Mean over the seeds both have of (recipe - plain) mAP@0.5 VOC, with those seeds' count."""
    pairs = [r["eval"]["none"]["voc_map_50"] - plain[r["seed"]] for r in runs if r["seed"] in plain]
    return f"{mean(pairs):+.4f} ({len(pairs)})" if pairs else ""


def tta_table(runs: list[dict]) -> list[str]:
    lines = ["| TTA variant | mAP@0.5 VOC | Δ vs none | COCO map | Δ vs none | CPU s / image (wall) |",
             "| --- | --- | ---: | --- | ---: | --- |"]
    base_voc = [r["eval"]["none"]["voc_map_50"] for r in runs]
    base_map = [r["eval"]["none"]["map"] for r in runs]
    for variant in TTA:
        have = [r for r in runs if variant in r["eval"]]
        if not have:
            continue
        voc = [r["eval"][variant]["voc_map_50"] for r in have]
        coco = [r["eval"][variant]["map"] for r in have]
        wall = mean([r["eval"][variant]["s_per_image"] for r in have])
        cpu = mean([r["eval"][variant]["cpu_s_per_image"] for r in have])
        lines.append(f"| {variant} | {spread(voc)} | {mean(voc) - mean(base_voc):+.4f} | {spread(coco)} | "
                     f"{mean(coco) - mean(base_map):+.4f} | {cpu:.2f} ({wall:.2f}) |")
    return lines


PROBES = {"ema_probe/decay 0": "raw weights (decay 0)", "ema_probe/decay 0.9": "EMA decay 0.9",
          "ema_probe/decay 0.98": "EMA decay 0.98", "none": "EMA as configured (the checkpoint's)"}


def probe_table(runs: list[dict]) -> list[str]:
    runs = [r for r in runs if "ema_probe/decay 0" in r["eval"]]
    lines = ["| weights | seeds | mAP@0.5 VOC | Δ vs raw (paired) | COCO map | Δ vs raw (paired) |",
             "| --- | ---: | --- | ---: | --- | ---: |"]
    for key, title in PROBES.items():
        voc = [r["eval"][key]["voc_map_50"] for r in runs]
        coco = [r["eval"][key]["map"] for r in runs]
        dvoc = [r["eval"][key]["voc_map_50"] - r["eval"]["ema_probe/decay 0"]["voc_map_50"] for r in runs]
        dmap = [r["eval"][key]["map"] - r["eval"]["ema_probe/decay 0"]["map"] for r in runs]
        lines.append(f"| {title} | {len(runs)} | {spread(voc)} | {mean(dvoc):+.4f} | {spread(coco)} | {mean(dmap):+.4f} |")
    return lines


def rare_ap(runs: list[dict]) -> str:
    return spread([r["eval"]["none"][f"ap/{RARE}"] for r in runs]) + " / " + spread(
        [r["eval"]["none"][f"ap50/{RARE}"] for r in runs], 3)


def coverage(runs: list[dict]) -> str:
    fits = [r["anchor_fit"] for r in runs if r.get("anchor_fit")]
    if not fits:
        return "-"
    fit = fits[0]
    return (f"{100 * fit['coverage_before']:.1f} % -> {100 * fit['coverage_after']:.1f} % of {fit['boxes']} boxes; "
            f"{fit['sizes']} x {fit['aspect_ratios']}")


def report(rows: list[dict], command: str, date: datetime.date, section: str = SECTION) -> tuple[str, str]:
    groups = grouped(rows)
    loads = [v for r in rows for v in (r["load_start"], r["load_end"])]
    threads = sorted({r["threads"] for r in rows})
    lines = [section, "", f"{date:%Y-%m-%d}, `{command}` (the runs: the commands below), "
             f"{machine_line(threads)}; load average {min(loads, default=0):.1f}-{max(loads, default=0):.1f} "
             "while the runs ran (the budget counts CPU time, not wall time; other jobs on the cores still move a step's CPU "
             "seconds through the shared caches).", "",
             *run_commands(rows), ""]
    titles = {"raccoon": "Raccoon (mAP@0.5 VOC area on the 40 val images)",
              "longtail": f"Long-tail shapes (`{RARE}` 20x rarer in training; rare class AP@[.5:.95] / AP@0.5)",
              "small": "Small shapes (anchor coverage: boxes with an anchor at IoU >= the RPN's foreground threshold)"}
    extras = {"longtail": {f"{RARE} AP / AP50": rare_ap}, "small": {"anchor coverage: default -> fitted": coverage},
              "raccoon": {"anchors": coverage}}
    for suite, all_recipes in groups.items():
        for budget in sorted({budget_of(r) for runs in all_recipes.values() for r in runs}):
            recipes = {name: [r for r in runs if budget_of(r) == budget] for name, runs in all_recipes.items()}
            text = f"{budget[1]} optimizer steps" if budget[1] else f"{budget[0]:g} CPU s of training steps"
            lines += [f"### {titles.get(suite, suite)}, {text}", "",
                      f"Budget {text} per run; mean ± standard deviation over the seeds (min-max).", ""]
            lines += budget_tables({name: runs for name, runs in recipes.items() if runs}, extras.get(suite))
    return section, "\n".join(lines)


def budget_of(row: dict) -> tuple[float, int]:
    """(CPU seconds, steps or 0): a run's budget."""
    return row["budget_s"], int(row.get("max_steps") or 0)


def run_commands(rows: list[dict]) -> list[str]:
    """The bench/recipes.py commands that produce ``rows``: one per suite and budget."""
    runs: dict[tuple[str, tuple], tuple[set, set]] = defaultdict(lambda: (set(), set()))
    for row in rows:
        runs[row["suite"], budget_of(row)][0].add(row["recipe"])
        runs[row["suite"], budget_of(row)][1].add(row["seed"])
    order = list(SUITES)
    return ["    " + f".venv/bin/python bench/recipes.py --suite {suite} --budget {cpu:g}"
            + (f" --steps {steps}" if steps else "") + " --seeds " + " ".join(map(str, sorted(seeds)))
            + " --recipes " + " ".join(r for r in SUITES[suite] if r in recipes)
            for (suite, (cpu, steps)), (recipes, seeds) in sorted(runs.items(), key=lambda kv: (order.index(kv[0][0]),
                                                                                               kv[0][1]))]


def budget_tables(recipes: dict[str, list[dict]], extra: dict | None) -> list[str]:
    """One suite at one budget: the recipes, then TTA's variants and the EMA probes where measured."""
    lines = recipe_table(recipes, extra)
    for name, runs in recipes.items():
        if any(set(r["eval"]) - {"none", "flip_nms"} - set(PROBES) for r in runs):
            lines += ["", f"Test-time augmentation on the `{name}` models (scales {TTA['scales_nms']['scales']}):",
                      "", *tta_table(runs)]
        if any("ema_probe/decay 0" in r["eval"] for r in runs):
            lines += ["", f"EMA probes of the `{name}` runs (bench/_recipes_probe.py): the same training's weights "
                      "averaged with other decays; decay 0 is the raw weights. Paired per seed:", "",
                      *probe_table(runs)]
    return [*lines, ""]


def machine_line(threads: list[int]) -> str:
    import torch

    torch.set_num_threads(threads[0] if threads else 1)
    return machine(torch.device("cpu"))
