"""Small helpers shared by the benchmarks: timing, the machine's GEMM rate, recording a section."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

README = Path(__file__).resolve().parent / "README.md"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """-> (wall seconds, process CPU seconds) that ``fn()`` takes, the device drained before and after.

    CPU time (all threads of this process) is the cross-check on a shared machine: time spent
    waiting while other jobs hold the cores shows up in the wall time only.
    """
    sync(device)
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - start_cpu


def cpu_ticks(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(steal, all) clock ticks of the machine's CPUs so far, from Linux's ``/proc/stat``; None
    where it cannot be read. Steal is the time a hypervisor ran other guests while this machine's
    virtual CPUs had work: the noise of a shared virtual machine that no timing here can see."""
    with contextlib.suppress(OSError, ValueError):
        fields = stat.read_text().split("\n", 1)[0].split()
        if fields[0] == "cpu" and len(fields) >= 9:
            ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
            return ticks[7], sum(ticks)
    return None


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of the machine's CPU time the hypervisor took between two ``cpu_ticks()``."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


class GemmRate:
    """FLOP/s of one large float32 matmul (``n x n @ n x n``): the machine's practical peak.

    Measured again between the steps of a benchmark, so that it shares their noise (other jobs on
    a shared machine slow both alike).
    """

    def __init__(self, device: torch.device, n: int | None = None) -> None:
        self.n = n or (8192 if device.type == "cuda" else 2048)
        self.device = device
        generator = torch.Generator().manual_seed(0)
        self.a = torch.randn(self.n, self.n, generator=generator).to(device)
        self.b = torch.randn(self.n, self.n, generator=generator).to(device)
        torch.mm(self.a, self.b)  # first call: library initialisation

    def measure(self) -> float:
        return 2 * self.n**3 / timed(lambda: torch.mm(self.a, self.b), self.device)[0]


def machine(device: torch.device) -> str:
    """One line naming the hardware the numbers come from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def record(section: str, markdown: str, readme: Path = README) -> None:
    """Put ``markdown`` (starting with the ``section`` heading) into bench/README.md in place of that
    section, leaving every other section as it is."""
    text = readme.read_text() if readme.exists() else "# Benchmarks\n"
    markdown = markdown.rstrip("\n") + "\n"
    start = text.find(section + "\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + markdown
    else:
        end = text.find("\n## ", start + len(section))
        text = text[:start] + markdown + (text[end:] if end != -1 else "")
    readme.write_text(text)


def publish(section: str, lines: list[str], write: bool) -> None:
    """Print a benchmark's section (its markdown ``lines``, the heading first) and, with ``write``,
    put it into bench/README.md (``record``)."""
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if write:
        record(section, text)
