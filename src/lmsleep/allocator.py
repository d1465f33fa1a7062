"""Give freed tensor memory back to the operating system during a CPU night (glibc only).

    from lmsleep.allocator import return_freed_memory
    return_freed_memory(256)   # from now on, blocks of 256 KB and more are mmap'ed and unmapped when freed

Why: PyTorch's CPU tensors come from malloc. glibc serves blocks under its mmap threshold from its heap, and that
threshold RISES (up to 32 MB) each time a larger mmap'ed block is freed. A training step allocates and frees many
activation-sized blocks (100 KB to a few MB on SmolLM2); once they land in the heap, the heap's high-water mark stays
resident and fragments, so a process's peak RSS sits well above what it ever held at once (about 80 MB on
SmolLM2's KS night: bench/seed_vs_trl.py). Fixing the threshold (`mallopt(M_MMAP_THRESHOLD)`) stops the rise and
sends such blocks to mmap, whose pages go back to the system as soon as a tensor is freed.

Cost: each of those blocks is a fresh mapping whose pages are zeroed by the kernel on first touch: on a 4-step
SmolLM2 night 7.2 s of system time against 3.1 s, for about 55 s of user time either way (docs/results.md,
"Seed speed and memory", session 6). The setting is
process-wide and stays for the rest of the process (glibc has no way to read back or restore its dynamic default).
Elsewhere (macOS, musl, Windows) it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_applied: dict[str, int] = {}


def return_freed_memory(threshold_kb: int) -> bool:
    """Fix glibc's mmap threshold at `threshold_kb` KB (0 = leave malloc as it is). True when it took effect."""
    if threshold_kb <= 0 or not sys.platform.startswith("linux"):
        return False
    if _applied.get("kb") == threshold_kb:
        return True
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, threshold_kb * 1024) != 1:  # glibc returns 1 on success; musl's stub returns 0
        return False
    _applied["kb"] = threshold_kb
    return True
