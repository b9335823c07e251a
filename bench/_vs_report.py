"""The tables of bench/vs_torchvision.py: speed, memory, FLOPs, ratios with targets, stages, ops,
and the methods paragraph, described from the built models themselves."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from _stages import BACKWARD, OPTIMIZER
from _vs_data import IMAGES_PER_STEP, NUM_CLASSES
from _vs_pairs import ROI_HEADS_REST, Pair
from _vs_runner import Options, Result

# issue 15's targets; the GEMM share per configuration that has one
TARGETS = {"train": 1.5, "infer": 1.10, "memory": 1.0, "noise": 0.05}
GEMM_SHARE = {"resnet50_c4": 0.7, "resnet50_fpn": 0.6}


def methods(pair: Pair) -> str:
    """What both models of a pair compute, read off our built model (the twin has the same values)."""
    rpn, heads = pair.ours.rpn, pair.ours.roi_heads
    gen = rpn.anchor_generator
    return (
        f"Both models: {IMAGES_PER_STEP} seeded synthetic square images per step (3-5 boxes each, {NUM_CLASSES} "
        f"classes), frozen BatchNorm, the same weights; anchors {list(gen.sizes)} x {list(gen.aspect_ratios)}; "
        f"RPN {rpn.batch_size_per_image} anchors at {rpn.positive_fraction:.0%} positive, IoU "
        f"{rpn.matcher.fg_iou_threshold} / {rpn.matcher.bg_iou_threshold}, pre-NMS {rpn.pre_nms_top_n['train']} / "
        f"{rpn.pre_nms_top_n['test']} per level, {rpn.post_nms_top_n['train']} / {rpn.post_nms_top_n['test']} "
        f"proposals kept (train / test), NMS {rpn.nms_threshold}; R-CNN {heads.batch_size_per_image} RoIs per image "
        f"at {heads.positive_fraction:.0%} positive, IoU {heads.matcher.fg_iou_threshold}; score "
        f"{heads.score_threshold}, NMS {heads.nms_threshold}, {heads.detections_per_image} detections."
    )


def _verdict(value: float, target: float, higher_is_better: bool) -> str:
    value = round(value, 3)  # as shown
    met = value >= target if higher_is_better else value <= target
    return f"{'>=' if higher_is_better else '<='} {target} | {'met' if met else 'missed'}"


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}, {max(values):.2f}]"


def report(pair: Pair, results: dict[str, Result], gemm_rates: list[float], check: str, options: Options) -> str:
    """The markdown of one configuration: speed, memory, FLOPs, ratios with targets, stages, ops."""
    name, description = pair.name, pair.description
    gemm = statistics.median(gemm_rates)
    lines = [
        f"### {name}",
        "",
        f"{description}.",
        methods(pair),
        f"Agreement on one batch in inference: {check}.",
        "",
        "| model | train s/step median [min, max] | train img/s | infer s/step median [min, max] | infer img/s "
        "| CPU s/step train / infer | peak MB train / infer | GFLOP/step train / infer | % of GEMM rate train / infer |",
        "| --- | --- | ---: | --- | ---: | --- | --- | --- | --- |",
    ]
    for model, r in results.items():
        train, infer = statistics.median(r.train_s), statistics.median(r.infer_s)
        peaks = [p.peak_bytes for p in (r.train_profile, r.infer_profile)]
        lines.append(
            f"| {model} | {_spread(r.train_s)} | {IMAGES_PER_STEP / train:.3f} | {_spread(r.infer_s)} "
            f"| {IMAGES_PER_STEP / infer:.3f} "
            f"| {statistics.median(r.train_cpu_s):.2f} / {statistics.median(r.infer_cpu_s):.2f} "
            f"| {' / '.join('n/a' if p is None else f'{p / 2**20:.0f}' for p in peaks)} "
            f"| {r.train_flops / 1e9:.1f} / {r.infer_flops / 1e9:.1f} "
            f"| {100 * r.train_flops / train / gemm:.0f} % / {100 * r.infer_flops / infer / gemm:.0f} % |"
        )
    o, t = results["ours"], results["torchvision"]

    def speed(kind: str, pick: Callable[[list[float]], float]) -> float:  # ours img/s over theirs
        return pick(getattr(t, kind)) / pick(getattr(o, kind))

    lines += [
        "",
        f"GEMM rate: {gemm / 1e9:.1f} GFLOP/s, median of {len(gemm_rates)} large float32 matmuls, one per round "
        f"[{min(gemm_rates) / 1e9:.1f}, {max(gemm_rates) / 1e9:.1f}].",
        "",
        "| ours / torchvision | by median wall time | by min wall time | by median CPU time "
        "| per round: median [min, max] | target | |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    med = statistics.median
    for label, kind, target in (
        ("training images/s", "train", "train"),
        ("inference images/s", "infer", "infer"),
    ):
        value = speed(f"{kind}_s", med)
        # each round runs both models back to back: its ratio is the least exposed to a host whose
        # speed drifts between rounds
        rounds = [theirs / mine for mine, theirs in zip(getattr(o, f"{kind}_s"), getattr(t, f"{kind}_s"), strict=True)]
        lines.append(
            f"| {label} | {value:.3f} | {speed(f'{kind}_s', min):.3f} | {speed(f'{kind}_cpu_s', med):.3f} "
            f"| {med(rounds):.3f} [{min(rounds):.3f}, {max(rounds):.3f}] | {_verdict(value, TARGETS[target], True)} |"
        )
    for label, kind in (("peak memory, training", "train"), ("peak memory, inference", "infer")):
        mine, theirs = getattr(o, f"{kind}_profile").peak_bytes, getattr(t, f"{kind}_profile").peak_bytes
        if mine is not None and theirs:
            lines.append(
                f"| {label} | {mine / theirs:.3f} | | | | {_verdict(mine / theirs, TARGETS['memory'], False)} |"
            )
    if name in GEMM_SHARE:
        # Counted FLOPs include our RoIAlign's sparse product as if it were dense, and the sparse RPN
        # backward does fewer: the model's FLOPs are torchvision's count of the same network.
        for label, flops in (("counted", o.train_flops), ("model (torchvision's count)", t.train_flops)):
            share = flops / med(o.train_s) / gemm
            lines.append(
                f"| ours: training FLOP/s / GEMM FLOP/s, {label} | {share:.3f} | {flops / min(o.train_s) / gemm:.3f} | "
                f"| | {_verdict(share, GEMM_SHARE[name], True)} |"
            )
    lines += ["", noise_check(o, t, options)]
    if o.first_step_s is not None:
        compile_s = o.first_step_s - med(o.train_s)
        lines.append(
            f"Compilation: the first compiled training step took {o.first_step_s:.1f} s, {compile_s:.1f} s more than "
            f"a compiled step (median {med(o.train_s):.2f} s)."
        )
    lines += ["", *stage_table(results), "", *top_ops_table(results)]
    return "\n".join(lines)


def steady(o: Result, t: Result) -> bool:
    """Whether the noise check passes (``noise_check``)."""
    ratio = statistics.median(o.gemm_before_train) / statistics.median(t.gemm_before_train)
    within = abs(ratio - 1) <= TARGETS["noise"]
    if o.train_steal and t.train_steal:
        within = within and abs(statistics.median(o.train_steal) - statistics.median(t.train_steal)) <= TARGETS["noise"]
    return within


def noise_check(o: Result, t: Result, options: Options) -> str:
    """The GEMM rate met just before each model's training steps, ours / torchvision (medians): 1.00
    when both ran under the same load; on Linux, the hypervisor's steal during each model's training
    steps (medians), which must not differ by more than the same 5 points (a VM's other guests can
    take the cores for seconds: a GEMM measured just before a step does not see that); plus, where
    our backbone is still torchvision's module (no training rewrite), the old check: that module's
    forward time, ours / torchvision."""
    ratio = statistics.median(o.gemm_before_train) / statistics.median(t.gemm_before_train)
    within = steady(o, t)
    text = f"Noise check: GEMM rate just before each model's training steps, ours / torchvision = {ratio:.3f}"
    if o.train_steal and t.train_steal:  # Linux: what the hypervisor took during the steps themselves
        mine, theirs = statistics.median(o.train_steal), statistics.median(t.train_steal)
        text += (f"; the hypervisor's share of the CPUs during the training steps (/proc/stat steal, medians) "
                 f"ours {mine:.1%}, torchvision {theirs:.1%}, highest {max(o.train_steal + t.train_steal):.1%}")
    text += (f" (within {TARGETS['noise']:.0%} of 1, and of each other: "
             f"{'yes' if within else 'NO, the ratios above are not reliable'})")
    if not options.training_rewrite:
        mine, theirs = (statistics.median(s.get("backbone", 0.0) for s in r.train_stages) for r in (o, t))
        if mine and theirs:
            text += f"; the backbone forward (the same module on the same input) took ours / torchvision = {mine / theirs:.2f}"
    return text + "."


STAGE_ORDER = ["transform", "backbone", "rpn", "roi_pool", "box_head", ROI_HEADS_REST]


def stage_times(r: Result, kind: str) -> tuple[dict[str, float], float]:
    """-> (ms per stage, ms per step) of one model and mode.

    Forward stages, backward, optimizer and "other" (the step outside every stage): medians over the
    timed steps (StageClock), so they need not add up to the median step exactly; backward is split
    across stages in the proportions of the profiled step. Without clock readings (CUDA): the
    profiled step alone.
    """
    profile = getattr(r, f"{kind}_profile")
    clocks = getattr(r, f"{kind}_stages")
    if not any(clocks):
        return dict(profile.stages_ms), profile.wall_ms
    step_ms = 1000 * statistics.median(getattr(r, f"{kind}_s"))
    names = {n for c in clocks for n in c}
    stages = {n: 1000 * statistics.median([c.get(n, 0.0) for c in clocks]) for n in names}
    backward = stages.pop(BACKWARD, 0.0)
    split = {n: v for n, v in profile.stages_ms.items() if n.startswith("bwd ")}
    for n, v in split.items():
        stages[n] = backward * v / (sum(split.values()) or 1.0)
    return stages, step_ms


def stage_table(results: dict[str, Result]) -> list[str]:
    """ms (share of the step) per stage, both models, training and inference."""
    columns = [(m, kind, *stage_times(r, kind)) for m, r in results.items() for kind in ("train", "infer")]
    names: list[str] = []
    for *_, stages, _ in columns:
        names += [n for n in stages if n not in names]

    def rank(n: str) -> tuple:
        base = n.removeprefix("bwd ")
        order = STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER)
        return (n.startswith("bwd "), n == OPTIMIZER, n == "other", order)

    names.sort(key=rank)
    lines = [
        "| stage: ms (% of step) | " + " | ".join(f"{m} {k}" for m, k, *_ in columns) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for n in names:
        cells = [
            f"{stages[n]:.0f} ({100 * stages[n] / step:.0f} %)" if n in stages else ""
            for *_, stages, step in columns
        ]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{step:.0f}**" for *_, step in columns) + " |")
    return lines


def top_ops_table(results: dict[str, Result]) -> list[str]:
    lines = [
        "| heaviest ops of the profiled training step (self time, input shapes) | ms | % of that step |",
        "| --- | ---: | ---: |",
    ]
    for model, r in results.items():
        p = r.train_profile
        lines += [f"| {model}: `{op}` | {ms:.0f} | {100 * ms / p.wall_ms:.0f} % |" for op, ms in p.top_ops]
    return lines
