"""Speed-ups chosen by what this machine has (issue 28's levers that the measurements kept).

glibc's malloc gives every block above its mmap threshold (128 KiB, rising to at most 32 MiB as
it sees them) back to the kernel when freed, and trims the heap top above 128 KiB, so each
training step's activations are mapped and page-faulted in afresh: 1.9 M minor faults and 8 % of
the CPU time in the kernel over 120 steps of the demo recipe. Raising both thresholds keeps the
memory in the process between steps; giving the free pages back just before DataLoader workers
are forked keeps the trainer's later writes from being copied page by page (copy-on-write) while
they live. Where the C library is not glibc nothing changes. Results do not depend on it (only
addresses do).

Measured and not kept (docs/results.md, "The CPU training step"): bf16 autocast (slower on an AMX Xeon; oneDNN
refuses a bf16 LSTM on AVX2), the native LSTM instead of oneDNN's (2.2x slower with AVX-512, 1.8x
with AVX2 only), OMP_WAIT_POLICY=passive (2.4x slower), one intra-op thread (1.2x less CPU, 1.5x
the wall time), two 1-thread DDP ranks instead of one 2-thread process (no faster). No loader
workers at all (`workers: 0`) is a recipe setting, not a detection: the CPU demo recipe sets it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3      # glibc's malloc.h
MMAP_THRESHOLD = 1 << 30                         # blocks below 1 GiB come from the heap, not mmap
TRIM_THRESHOLD = 1 << 30                         # keep up to 1 GiB of free heap top

_applied: str | None = None        # what keep_freed_memory did (the log line)
_tuned = None                      # glibc, once its thresholds are raised


def _glibc():
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def keep_freed_memory() -> str:
    """Raise glibc malloc's mmap and trim thresholds in this process (and the loader workers it
    forks later). Returns what was done, for the log; idempotent."""
    global _applied, _tuned
    if _applied is None:
        libc = _glibc()
        if libc is None or not hasattr(libc, "mallopt"):
            _applied = "allocator: not glibc, left as is"
        elif libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
            _applied, _tuned = "allocator: glibc malloc keeps freed memory (mmap and trim thresholds 1 GiB)", libc
        else:
            _applied = "allocator: glibc refused mallopt, left as is"
    return _applied


def release_free_memory() -> None:
    """Give the heap's free pages back to the kernel (glibc malloc_trim) before forking workers: a
    child shares every mapped page of the parent copy-on-write, so each page the trainer's next
    steps write would otherwise be copied, at a page fault each, while the workers live. Only
    where keep_freed_memory raised the thresholds (otherwise glibc trims by itself)."""
    if _tuned is not None and hasattr(_tuned, "malloc_trim"):
        _tuned.malloc_trim(0)


def tune(enabled: bool) -> str:
    """The detected speed-ups, or a note that they are off (--no-tune-host)."""
    return keep_freed_memory() if enabled else "host tuning off (--no-tune-host): library defaults"
