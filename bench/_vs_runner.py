"""Running one configuration of bench/vs_torchvision.py: warm-up, then interleaved timed rounds.

Each round: both models train (forward + backward + SGD with lr 0), then both infer, who goes
first alternating, then a large matmul gives the machine's GEMM rate under the same load.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from _common import GemmRate, cpu_ticks, steal_share, timed
from _stages import BACKWARD, OPTIMIZER, StageClock, StepProfile, phase, profile_step, stage_hooks
from _vs_data import batch
from _vs_pairs import Pair, Settings, _stages
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models.detection import FasterRCNN as TVFasterRCNN

from frcnn.app.fused_sgd import SGD as FusedSGD
from frcnn.layers.inference_rewrite import optimize_for_inference
from frcnn.layers.reused_grad import reused_grad_bytes
from frcnn.layers.training_rewrite import optimize_for_training
from frcnn.modeling.compile import compile_for_training


class Contender:
    """A model with its training step (forward, backward, SGD) and its inference step."""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        stages: dict[str, list[nn.Module]],
        device: torch.device,
        infer_model: nn.Module | None = None,
        weight_decay: float = 0.0,
    ) -> None:
        self.name = name
        self.model = model
        # Inference runs this one: ours rewritten by frcnn.inference (BatchNorm folded, channels-last)
        self.infer_model = infer_model if infer_model is not None else model
        self.stages = stages
        self.clock = StageClock(device)
        self.torchvision = isinstance(model, TVFasterRCNN)
        params = [p for p in model.parameters() if p.requires_grad]
        # lr 0: the update arithmetic runs, the weights (hence the work) stay the same. Weight decay
        # 0 by default (torch's loop makes a temporary copy of every gradient for it). Each model
        # steps the SGD its training code builds: torchvision's reference scripts torch.optim.SGD,
        # our conf/optimizer/sgd.yaml frcnn.app.fused_sgd.SGD.
        sgd = torch.optim.SGD if self.torchvision else FusedSGD
        self.optimizer = sgd(params, lr=0.0, momentum=0.9, weight_decay=weight_decay)

    def train_step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        self.model.train()
        out = self.model(images, targets)
        loss = sum(out.values()) if self.torchvision else out.losses["loss"]
        with phase(BACKWARD, self.clock):
            loss.backward()
        with phase(OPTIMIZER, self.clock):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def infer_step(self, images: list[Tensor]) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
        """-> (proposals per image (P_i, 4), detections per image)."""
        model = self.infer_model.eval()
        captured: list[list[Tensor]] = []

        def keep_proposals(module, args, output) -> None:  # returns None: leaves the output alone
            captured.append(output[0] if self.torchvision else output.proposals.boxes)

        handle = model.rpn.register_forward_hook(keep_proposals)
        try:
            with torch.inference_mode():
                out = model(images)
        finally:
            handle.remove()
        # RPN proposals are in the model's input pixels for both (the resize is a no-op here)
        return captured[0], (out if self.torchvision else out.detections)


def _nearest(mine: Tensor, theirs: Tensor, my_labels=None, their_labels=None) -> tuple[Tensor, Tensor]:
    """boxes (A, 4), (B, 4) -> for each of mine, the max-coordinate distance to the nearest of theirs
    (of the same label when given) (A,), and that box's index (A,)."""
    if len(mine) == 0 or len(theirs) == 0:
        return mine.new_full((len(mine),), float("inf")), torch.zeros(len(mine), dtype=torch.long)
    distance = (mine[:, None] - theirs[None]).abs().amax(-1)  # (A, B)
    if my_labels is not None:
        distance = distance.masked_fill(my_labels[:, None] != their_labels[None], float("inf"))
    return distance.min(dim=1)


def agreement(ours: tuple, theirs: tuple) -> str:
    """How far apart the two models' proposals and detections are on the same batch.

    Matched by position, not by rank: float rounding reorders near-tied scores, so the k-th box of
    one list need not be the k-th of the other. Each of our boxes is paired with the nearest of
    torchvision's (detections: of the same class); a box at a top-k cut-off can have no partner.
    """
    (my_props, my_dets), (tv_props, tv_dets) = ours, theirs
    p_counts = [(len(a), len(b)) for a, b in zip(my_props, tv_props)]
    p_gaps = torch.cat([_nearest(a, b)[0] for a, b in zip(my_props, tv_props)])
    d_counts = [(len(a["boxes"]), len(b["boxes"])) for a, b in zip(my_dets, tv_dets)]
    d_gaps, s_gaps = [], []
    for a, b in zip(my_dets, tv_dets):
        gap, index = _nearest(a["boxes"], b["boxes"], a["labels"], b["labels"])
        d_gaps.append(gap)
        s_gaps.append((a["scores"] - b["scores"][index]).abs() if len(b["scores"]) else gap)
    d_gaps, s_gaps = torch.cat(d_gaps), torch.cat(s_gaps)

    def share(gaps: Tensor, tol: float = 0.01) -> str:
        return f"{int((gaps <= tol).sum())} / {len(gaps)} within {tol} px"

    close = d_gaps <= 0.01
    score = float(s_gaps[close].max()) if close.any() else float("nan")
    return (
        f"proposals per image (ours, torchvision) {p_counts}: {share(p_gaps)} of one of torchvision's; "
        f"detections {d_counts}: {share(d_gaps)} of a torchvision detection of the same class, "
        f"max |score diff| of those pairs {score:.2g}"
    )


def count_flops(fn: Callable[[], object]) -> tuple[int, object]:
    """-> (FLOPs that ``fn()`` ran, its result)."""
    with FlopCounterMode(display=False) as counter:
        result = fn()
    return counter.get_total_flops(), result


@dataclass
class Result:
    """What one model measured in one configuration; times in seconds per step."""

    train_s: list[float] = field(default_factory=list)
    infer_s: list[float] = field(default_factory=list)
    train_cpu_s: list[float] = field(default_factory=list)  # process CPU time (all threads)
    infer_cpu_s: list[float] = field(default_factory=list)
    train_stages: list[dict[str, float]] = field(default_factory=list)  # StageClock seconds per step
    infer_stages: list[dict[str, float]] = field(default_factory=list)
    train_flops: int = 0
    infer_flops: int = 0
    train_profile: StepProfile | None = None
    infer_profile: StepProfile | None = None
    gemm_before_train: list[float] = field(default_factory=list)  # GEMM FLOP/s just before each training step
    train_steal: list[float] = field(default_factory=list)  # the hypervisor's share of the CPUs during each (Linux)
    first_step_s: float | None = None  # the first training step (compilation included), when compiled


@dataclass
class Options:
    """How ours runs: the inference rewrite for inference, the training rewrite and compilation
    for training (``--no-inference-rewrite``, ``--no-training-rewrite``, ``--compile``)."""

    inference_rewrite: bool = True
    training_rewrite: bool = True
    compile: bool = False
    weight_decay: float = 0.0  # both SGDs'


def run_config(pair: Pair, steps: int, warmup: int, gemm: GemmRate, options: Options) -> tuple[dict, list[float], str]:
    """Warm-up (the first step counts FLOPs and compares outputs, the last is profiled), then
    ``steps`` timed rounds, interleaved. -> ({model: Result}, GEMM FLOP/s per round, agreement).

    Ours infers with ``optimize_for_inference`` applied to a copy (what eval.py and predict.py
    run), and trains with ``optimize_for_training`` (what train.py's TrainingSpeed callback
    applies) and, with ``options.compile``, ``compile_for_training``; lr 0 keeps the two copies
    equal. The twin was built from ours before any rewrite."""
    ours_infer = optimize_for_inference(copy.deepcopy(pair.ours)) if options.inference_rewrite else None
    optimize_for_training(pair.ours, fold_frozen_bn=options.training_rewrite, channels_last=options.training_rewrite,
                          sparse_rpn_backward=options.training_rewrite, reuse_grad_memory=options.training_rewrite,
                          winograd=options.training_rewrite)
    if options.compile:
        compile_for_training(pair.ours)
    contenders = [
        Contender("ours", pair.ours, pair.ours_stages, pair.settings.device, ours_infer, options.weight_decay),
        Contender("torchvision", pair.theirs, pair.theirs_stages, pair.settings.device, weight_decay=options.weight_decay),
    ]
    results = {c.name: Result() for c in contenders}
    with contextlib.ExitStack() as hooks:
        for c in contenders:
            hooks.enter_context(stage_hooks(c.stages, c.clock))
        if ours_infer is not None:
            hooks.enter_context(stage_hooks(_stages(ours_infer, False), contenders[0].clock))
        if options.compile:  # compiled before FLOPs are counted: the counter sees the compiled step
            images, targets = batch(pair.settings.image_size, 0, pair.settings.device)
            results["ours"].first_step_s, _ = timed(partial(contenders[0].train_step, images, targets), pair.settings.device)
            print(f"  compiled: first training step {results['ours'].first_step_s:.1f} s", flush=True)
        check = _warm_up(contenders, results, warmup, pair.settings)
        gemm_rates = [_timed_round(contenders, results, i, warmup, pair.settings, gemm) for i in range(steps)]
    return results, gemm_rates, check


def _warm_up(contenders: list[Contender], results: dict[str, Result], warmup: int, s: Settings) -> str:
    """Untimed rounds: the first counts FLOPs and compares outputs, the last is profiled."""
    outputs = {}
    for i in range(warmup):
        images, targets = batch(s.image_size, i, s.device)
        for c in contenders:
            r = results[c.name]
            train, infer = partial(c.train_step, images, targets), partial(c.infer_step, images)
            if i == 0:
                r.train_flops, _ = count_flops(train)
                r.infer_flops, outputs[c.name] = count_flops(infer)
            elif i == warmup - 1:
                r.train_profile = profile_step(train, s.device)
                r.infer_profile = profile_step(infer, s.device)
                # memory a model keeps between steps and fills during one (frcnn.layers.reused_grad):
                # allocated before the step, live at its peak
                if r.train_profile.peak_bytes is not None:
                    r.train_profile.peak_bytes += reused_grad_bytes(c.model)
            else:
                train()
                infer()
        print(f"  warm-up round {i} done", flush=True)
    check = agreement(outputs["ours"], outputs["torchvision"])
    print(f"  agreement: {check}", flush=True)
    return check


def _timed_round(
    contenders: list[Contender], results: dict[str, Result], i: int, warmup: int, s: Settings, gemm: GemmRate
) -> float:
    """Both models train, then both infer (who goes first alternates); then the GEMM rate."""
    images, targets = batch(s.image_size, warmup + i, s.device)
    order = contenders if i % 2 == 0 else contenders[::-1]
    for kind in ("train", "infer"):
        for c in order:
            step = (
                partial(c.train_step, images, targets) if kind == "train" else partial(c.infer_step, images)
            )
            r = results[c.name]
            if kind == "train":  # the load each model's step meets: the noise check
                r.gemm_before_train.append(gemm.measure())
            c.clock.reset()
            ticks = cpu_ticks()
            wall, cpu = timed(step, s.device)
            if kind == "train" and (steal := steal_share(ticks, cpu_ticks())) is not None:
                r.train_steal.append(steal)
            getattr(r, f"{kind}_s").append(wall)
            getattr(r, f"{kind}_cpu_s").append(cpu)
            stages = dict(c.clock.totals)
            if stages:  # the clock runs on the CPU only
                stages["other"] = wall - sum(stages.values())  # outside every stage
            getattr(r, f"{kind}_stages").append(stages)
    rate = gemm.measure()
    print(
        f"  round {i}: "
        + ", ".join(
            f"{c.name} train {results[c.name].train_s[-1]:.2f} s, infer {results[c.name].infer_s[-1]:.2f} s"
            for c in contenders
        )
        + f"; GEMM {rate / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    return rate
