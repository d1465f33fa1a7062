"""lmsleep.allocator: freed tensors go back to the system once the mmap threshold is fixed (glibc only)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from lmsleep import allocator
from lmsleep.config import SeedConfig
from lmsleep.ks import awake
from lmsleep.ks import consolidate as ks

# A child process (the setting is process-wide): after one freed 1 MB block, 96 MB of 384 KB tensors, each followed
# by a small tensor that stays alive and pins the heap behind it, then the big ones are freed. Prints the MB still
# resident of the 96.
FRAGMENT = textwrap.dedent("""
    import sys, torch
    from lmsleep.allocator import return_freed_memory

    def rss_mb():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / 2**20

    print("applied", return_freed_memory(int(sys.argv[1])))
    torch.ones(256 * 1024).sum()  # a freed 1 MB block, as every training step frees: glibc's threshold rises past it
    kept, big = [], []
    start = rss_mb()
    for _ in range(256):
        big.append(torch.ones(96 * 1024))  # 384 KB
        kept.append(torch.ones(512))  # 2 KB, alive to the end
    del big
    print("resident", round(rss_mb() - start, 1))
""")


def _run(kb: int) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", FRAGMENT, str(kb)], capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    return out[1] == "True", float(out[3])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_tensors_go_back_to_the_system_only_with_the_threshold_fixed():
    applied, resident = _run(256)
    default_applied, default_resident = _run(0)
    assert applied and not default_applied
    assert resident < 16  # of 96 MB freed: only the small tensors and page rounding stay
    assert default_resident > 64  # glibc's rising threshold kept the freed blocks in its heap


def test_zero_leaves_malloc_alone():
    assert allocator.return_freed_memory(0) is False


def test_the_ks_night_applies_its_configured_threshold(monkeypatch):
    calls = []

    def record(kb):
        calls.append(kb)
        raise RuntimeError("stop after the setting")  # the night itself is tested elsewhere

    monkeypatch.setattr(ks, "return_freed_memory", record)
    with pytest.raises(RuntimeError, match="stop after the setting"):
        ks.train_student(None, "night", 0, [], None, [], SeedConfig(method="ks", ks_return_freed_memory_kb=128))
    assert calls == [128]
    assert SeedConfig().ks_return_freed_memory_kb == 256


def test_the_fast_level_night_applies_its_configured_threshold(monkeypatch):
    calls = []

    def record(kb):
        calls.append(kb)
        raise RuntimeError("stop after the setting")

    monkeypatch.setattr(awake, "return_freed_memory", record)
    cfg = SeedConfig(method="ks", ks_sender="fast_level", ks_return_freed_memory_kb=64)
    with pytest.raises(RuntimeError, match="stop after the setting"):
        awake.seed_through_fast_level(None, None, [], cfg)
    assert calls == [64]
