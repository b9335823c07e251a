"""Training of bench/finetune_raccoon.py: one batch stream read by both models, each model's state,
and the interleaved slices that spend each model's time budget."""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from _finetune_common import RandomStream, budget_lr_factor, build_reference
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor, nn

from frcnn.app.build import build_model
from frcnn.app.optim import build_optimizer

Batch = tuple[Sequence[Tensor], Sequence[dict[str, Tensor]]]
Detections = list[dict[str, Tensor]]


class BatchTape:
    """One stream of training batches that several models read in the same order, each at its own pace.

    ``get(i)`` is the i-th batch of the stream (epochs follow each other); batches every reader has
    passed are dropped. Fetching runs under its own random stream, so the batches (order and flips)
    do not depend on how the models interleave, and its time (``fetch_seconds``) is nobody's budget.
    """

    def __init__(self, loader, stream: RandomStream) -> None:
        self.loader = loader
        self.stream = stream
        self.iterator = None
        self.batches: deque[Batch] = deque()
        self.first = 0  # stream index of batches[0]
        self.fetch_seconds = 0.0

    def get(self, index: int) -> Batch:
        while index >= self.first + len(self.batches):
            start = time.perf_counter()
            with self.stream.active():
                batch = next(self.iterator, None) if self.iterator is not None else None
                if batch is None:  # first batch, or a new epoch
                    self.iterator = iter(self.loader)
                    batch = next(self.iterator)
            self.batches.append(batch)
            self.fetch_seconds += time.perf_counter() - start
        return self.batches[index - self.first]

    def release(self, index: int) -> None:
        """Drop the batches before stream index ``index``."""
        while self.batches and self.first < index:
            self.batches.popleft()
            self.first += 1


@dataclass
class Trainee:
    """One model under training and what it has consumed."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    losses: Callable[[Sequence[Tensor], Sequence[dict[str, Tensor]]], dict[str, Tensor]]  # with "loss"
    detect: Callable[[Sequence[Tensor]], Detections]
    stream: RandomStream
    base_lrs: list[float] = field(default_factory=list)
    steps: int = 0
    images: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    last_losses: dict[str, float] = field(default_factory=dict)
    diverged: bool = False

    def __post_init__(self) -> None:
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]

    def spent(self, clock: str) -> float:
        return self.wall_s if clock == "wall" else self.cpu_s


def build_ours(cfg: DictConfig) -> Trainee:
    model = build_model(cfg.model)
    optimizer = build_optimizer(instantiate(cfg.optimizer), model, cfg.module.norm_bias_weight_decay)
    return Trainee(
        name="ours (frcnn)",
        model=model,
        optimizer=optimizer,
        losses=lambda images, targets: model(images, targets).losses,
        detect=lambda images: model(images).detections,
        stream=RandomStream(),
    )


def build_torchvision(args: argparse.Namespace, num_classes: int, weights) -> Trainee:
    model = build_reference(weights, num_classes, args.min_size, args.max_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.reference_lr, momentum=0.9, weight_decay=1e-4)

    def losses(images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        out = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        return {**out, "loss": sum(out.values())}

    return Trainee(
        name="torchvision",
        model=model,
        optimizer=optimizer,
        losses=losses,
        detect=lambda images: model(list(images)),
        stream=RandomStream(),
    )


def train_slice(trainee: Trainee, tape: BatchTape, args: argparse.Namespace, budget_s: float) -> None:
    """Train ``trainee`` for up to ``args.slice`` seconds of its clock, within its budget."""
    slice_start = trainee.spent(args.clock)
    trainee.model.train()
    with trainee.stream.active():
        while (
            not trainee.diverged
            and trainee.spent(args.clock) < budget_s
            and trainee.spent(args.clock) - slice_start < args.slice
        ):
            images, targets = tape.get(trainee.steps)
            factor = budget_lr_factor(
                trainee.spent(args.clock) / budget_s, args.warmup_fraction, args.min_lr_factor
            )
            for group, base_lr in zip(trainee.optimizer.param_groups, trainee.base_lrs):
                group["lr"] = base_lr * factor
            wall, cpu = time.perf_counter(), time.process_time()
            losses = trainee.losses(images, targets)
            trainee.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            trainee.optimizer.step()
            trainee.wall_s += time.perf_counter() - wall
            trainee.cpu_s += time.process_time() - cpu
            trainee.steps += 1
            trainee.images += len(images)
            trainee.last_losses = {name: float(value.detach()) for name, value in losses.items()}
            trainee.diverged = not math.isfinite(trainee.last_losses["loss"])


def train_interleaved(trainees: list[Trainee], tape: BatchTape, args: argparse.Namespace) -> None:
    budget_s = 60.0 * args.minutes
    while any(not t.diverged and t.spent(args.clock) < budget_s for t in trainees):
        for trainee in trainees:
            if trainee.diverged or trainee.spent(args.clock) >= budget_s:
                continue
            train_slice(trainee, tape, args, budget_s)
            tape.release(min(t.steps for t in trainees))
            losses = " ".join(f"{k}={v:.3f}" for k, v in trainee.last_losses.items())
            print(
                f"[{time.strftime('%H:%M:%S')}] {trainee.name:<13} steps {trainee.steps:4d}  "
                f"{args.clock} {trainee.spent(args.clock):7.1f}/{budget_s:.0f} s  "
                f"lr {trainee.optimizer.param_groups[0]['lr']:.2e}  {losses}"
                + ("  DIVERGED" if trainee.diverged else ""),
                flush=True,
            )
