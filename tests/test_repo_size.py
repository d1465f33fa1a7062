"""The tracked tree must fit the GPU machine's copy of the working tree (64 MiB a call, .library/device/README.md).

Session 19 found the repo at 70 MB, mostly kept benchmark JSON, so no GPU check could run from it; large kept
results are now gzipped. This test fails when a commit pushes the tree back towards the limit.
"""
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEVICE_COPY_LIMIT = 64 * 2**20
HEADROOM = 0.75  # leave a quarter of the limit for carried venvs, wheels and untracked outputs


def tracked_sizes() -> dict[str, int]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = [n for n in listing.decode().split("\0") if n and (ROOT / n).is_file()]
    assert names, "git lists no tracked files"
    return {n: (ROOT / n).stat().st_size for n in names}


def test_the_tracked_tree_leaves_room_under_the_gpu_machines_copy_limit():
    size = sum(tracked_sizes().values())
    assert size < HEADROOM * DEVICE_COPY_LIMIT, (
        f"tracked files take {size / 2**20:.1f} MiB; the GPU machine copies at most 64 MiB of the working tree: "
        "gzip large kept results (see docs/bench/nights.md) or leave them out")


def test_no_single_tracked_file_is_a_bulk_result():
    big = sorted(name for name, size in tracked_sizes().items() if size > 3 * 2**20)
    assert not big, f"tracked files over 3 MiB (gzip them or keep them out of the repo): {big}"
