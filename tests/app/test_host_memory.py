"""frcnn.app.host_memory: glibc keeps large freed blocks, so a step's large tensors do not
page-fault in again; the setting is process-wide, so the real allocator is tested in child
processes and the rest against a stand-in C library."""

import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

import frcnn.app.host_memory as host_memory
import frcnn.app.runtime as runtime

# The minor page faults of the last of 16 allocations of a 96 MB tensor, filled and freed in turn:
# what every training step does with its large activations and gradients. With the setting glibc's
# heap settles after a few (on glibc 2.36 an aligned allocation cannot reuse a freed block of exactly
# its size: ~8 allocations, the fragmentation frcnn.app.host_memory states), then reuses; without
# it every allocation is mapped afresh.
CHILD = textwrap.dedent("""
    import importlib.util, resource, sys, torch
    spec = importlib.util.spec_from_file_location("host_memory", sys.argv[2])  # not frcnn.app: no Lightning
    host_memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(host_memory)
    applied = host_memory.reuse_host_memory() if sys.argv[1] == "on" else 0
    numel = 96 * 2**20 // 4
    for _ in range(15):
        torch.empty(numel).fill_(1.0)  # allocated, touched, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(numel).fill_(2.0)
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(mode: str) -> tuple[int, int]:
    command = [sys.executable, "-c", CHILD, mode, host_memory.__file__]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    applied, faults = out.split()
    return int(applied), int(faults)


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's allocator only (this C library is not glibc)")
def test_a_freed_large_block_is_reused_without_page_faults():
    pages = 96 * 2**20 // 4096
    applied, faults = _faults("off")
    assert applied == 0 and faults > 0.9 * pages  # glibc's default: mapped afresh, a fault per page
    applied, faults = _faults("on")
    assert applied == host_memory.KEEP_BYTES  # this glibc takes the 1 GiB threshold
    assert faults < 0.02 * pages  # the freed block is reused as it is


class _FakeLibc:
    """mallopt as an older glibc: an mmap threshold over 32 MB is refused (returns 0)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.calls = limit, []

    def mallopt(self, param: int, value) -> int:
        self.calls.append((param, value.value))
        return 0 if param == host_memory.M_MMAP_THRESHOLD and value.value > self.limit else 1


def test_a_glibc_that_refuses_1_gib_gets_its_largest_threshold(monkeypatch):
    libc = _FakeLibc(limit=host_memory.FALLBACK_BYTES)
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    assert host_memory.reuse_host_memory() == host_memory.FALLBACK_BYTES
    assert libc.calls == [(host_memory.M_MMAP_THRESHOLD, 2**30), (host_memory.M_MMAP_THRESHOLD, 32 * 2**20),
                          (host_memory.M_TRIM_THRESHOLD, 2**30)]


def test_a_refusing_or_absent_glibc_leaves_the_allocator(monkeypatch, caplog):
    libc = _FakeLibc(limit=0)
    monkeypatch.setattr(host_memory, "_glibc", lambda: libc)
    assert host_memory.reuse_host_memory() == 0
    assert all(param == host_memory.M_MMAP_THRESHOLD for param, _ in libc.calls)  # no trim setting either
    assert "refused" in caplog.text
    monkeypatch.setattr(host_memory, "_glibc", lambda: None)
    assert host_memory.reuse_host_memory() == 0


@pytest.mark.parametrize("setting", [True, False, None])
def test_setup_runtime_applies_the_setting_only_when_asked(setting, monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "reuse_host_memory", lambda: calls.append(True))
    runtime.setup_runtime(OmegaConf.create({"seed": None, "torch_threads": None, "reuse_host_memory": setting}))
    assert calls == ([True] if setting else [])
