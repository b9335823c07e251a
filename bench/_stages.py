"""Where a detector's step spends its time and memory: stage clocks, and one torch.profiler run.

Stages are the forwards of named submodules (backbone, RPN, RoI pooling, ...), marked by forward
hooks, so the model's code is not touched and the same tool reads ours and torchvision's. Each
hook pair opens and closes a ``stage:<name>`` profiler range and a ``StageClock`` interval. A
stage's time excludes the stages nested in it (RoI pooling and the box head inside the RoI heads),
so the stages add up to the step.

The clock runs in every timed step (a few ``perf_counter`` calls), which gives per-stage medians
over many steps on a noisy machine. Backward is one interval for the clock; the profiler splits it
by stage: the profiler records the same autograd sequence number on a forward op and on the
``autograd::engine::evaluate_function: ...Backward0`` event that runs its gradient.

Peak memory is the highest level of live bytes above the level at the start of the step (weights
and optimizer state are not counted): on CUDA ``torch.cuda.max_memory_allocated``; on the CPU the
running sum of the profiler's allocation / free records of the CPU allocator (tracemalloc does not
see torch's allocations, and RSS keeps freed memory in the allocator's arenas).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile

PREFIX = "stage:"
BACKWARD = "backward"
OPTIMIZER = "optimizer"
_EVALUATE = "autograd::engine::evaluate_function: "


class StageClock:
    """Exclusive wall time per named interval of one step; intervals nest.

    Inactive on CUDA (timing there would need a synchronisation at every boundary); the profiled
    step still gives the breakdown.
    """

    def __init__(self, device: torch.device) -> None:
        self.active = device.type != "cuda"
        self.totals: dict[str, float] = {}
        self._open: list[list] = []  # [name, start, time of nested intervals]

    def reset(self) -> None:
        self.totals = {}
        self._open = []

    def begin(self, name: str) -> None:
        if self.active:
            self._open.append([name, time.perf_counter(), 0.0])

    def end(self) -> None:
        if not self.active or not self._open:
            return
        name, start, nested = self._open.pop()
        elapsed = time.perf_counter() - start
        self.totals[name] = self.totals.get(name, 0.0) + elapsed - nested
        if self._open:
            self._open[-1][2] += elapsed


@contextlib.contextmanager
def phase(name: str, clock: StageClock) -> Iterator[None]:
    """A named interval for both the profiler and the clock (backward, optimizer)."""
    clock.begin(name)
    with record_function(name):
        yield
    clock.end()


@contextlib.contextmanager
def stage_hooks(stages: Mapping[str, Sequence[nn.Module]], clock: StageClock) -> Iterator[None]:
    """Mark every forward of each listed module as stage ``name`` for the profiler and the clock."""
    open_ranges: list[record_function] = []  # module calls nest properly, so a stack suffices

    def enter(name: str) -> Callable:
        def hook(module, args) -> None:
            clock.begin(name)
            rf = record_function(PREFIX + name)
            rf.__enter__()
            open_ranges.append(rf)

        return hook

    def leave(module, args, output) -> None:  # returns None: the output is left alone
        open_ranges.pop().__exit__(None, None, None)
        clock.end()

    handles = []
    for name, modules in stages.items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class StepProfile:
    """One profiled step: wall time, time per stage, the heaviest ops, and the memory peak."""

    wall_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)  # "backbone", "bwd backbone", ...
    top_ops: list[tuple[str, float]] = field(default_factory=list)  # (op [input shapes], self ms)
    peak_bytes: int | None = None


def _stage_of(event) -> str | None:
    """The innermost stage range around ``event`` (None outside every stage)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith(PREFIX):
            return parent.name[len(PREFIX) :]
        parent = parent.cpu_parent
    return None


def _cpu_peak_bytes(prof: profile) -> int | None:
    """Highest running sum of the CPU allocator's records (bytes, >= 0), None if unreadable."""
    try:
        records = [
            (e.start_ns(), e.nbytes())
            for e in prof.profiler.kineto_results.events()
            if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
        ]
    except AttributeError:  # the profiler's internals moved
        return None
    level = peak = 0
    for _, nbytes in sorted(records):
        level += nbytes
        peak = max(peak, level)
    return peak


def peak_bytes(step: Callable[[], object], device: torch.device) -> int | None:
    """The memory peak of one run of ``step`` above its start (bytes): CUDA's allocator statistics,
    or on a CPU the allocator records of a profiler run that records nothing else. Recording input
    shapes keeps small tensors alive past their last use: ~5.6 MB of the sparse RoIAlign's per-chunk
    taps at MobileNetV2 inference's peak (152.0 MB without, 157.6 MB with record_shapes)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start_bytes = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start_bytes
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    return _cpu_peak_bytes(prof)


def profile_step(step: Callable[[], object], device: torch.device, top: int = 6) -> StepProfile:
    """Run ``step`` once for its memory peak (``peak_bytes``), then once under the profiler (stage
    hooks installed) and break its time down.

    Times are CPU times on the CPU and kernel times on CUDA, in milliseconds.
    """
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    peak = peak_bytes(step, device)
    with profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms = 1000 * (time.perf_counter() - start)

    def ms(event) -> float:
        return (event.device_time_total if cuda else event.cpu_time_total) / 1000

    events = prof.events()
    stages_ms: dict[str, float] = {}
    backward_ms = sum(ms(e) for e in events if e.name == BACKWARD)
    backward_start = min((e.time_range.start for e in events if e.name == BACKWARD), default=float("inf"))
    for e in events:
        if e.name.startswith(PREFIX):
            nested = 0.0  # exclusive time: minus the stage ranges nested in this one
            stack = list(e.cpu_children)
            while stack:
                child = stack.pop()
                if child.name.startswith(PREFIX):
                    nested += ms(child)
                else:
                    stack.extend(child.cpu_children)
            name = e.name[len(PREFIX) :]
            stages_ms[name] = stages_ms.get(name, 0.0) + ms(e) - nested
        elif e.name == OPTIMIZER:
            stages_ms[OPTIMIZER] = stages_ms.get(OPTIMIZER, 0.0) + ms(e)

    # Every forward op records the number the next autograd node will take, so ops that create no
    # node share it with the one that does; that one starts last among them.
    seq_stage: dict[int, str] = {}
    forward = [e for e in events if e.sequence_nr >= 0 and e.time_range.start < backward_start]
    for e in sorted(forward, key=lambda e: e.time_range.start):
        seq_stage[e.sequence_nr] = _stage_of(e) or "other"
    attributed_bwd = 0.0
    for e in events:
        if e.name.startswith(_EVALUATE):
            key = "bwd " + seq_stage.get(e.sequence_nr, "other")
            stages_ms[key] = stages_ms.get(key, 0.0) + ms(e)
            attributed_bwd += ms(e)
    if backward_ms > attributed_bwd:  # the engine's own time between nodes
        stages_ms["bwd other"] = stages_ms.get("bwd other", 0.0) + backward_ms - attributed_bwd
    stages_ms["other"] = max(wall_ms - sum(stages_ms.values()), 0.0)

    ops = [
        a
        for a in prof.key_averages(group_by_input_shape=True)
        if not a.key.startswith((PREFIX, _EVALUATE)) and a.key not in (BACKWARD, OPTIMIZER)
    ]

    def self_ms(a) -> float:
        return (a.self_device_time_total if cuda else a.self_cpu_time_total) / 1000

    ops.sort(key=self_ms, reverse=True)
    top_ops = [(f"{a.key} {_shapes(a.input_shapes)}", self_ms(a)) for a in ops[:top]]
    return StepProfile(wall_ms, stages_ms, top_ops, peak)


def _shapes(shapes) -> str:
    """The non-empty input shapes of an op, short: ``[128, 62720] [1024, 62720]``."""
    text = " ".join(str(list(s)) for s in (shapes or []) if s)
    return text if len(text) <= 48 else text[:45] + "..."
