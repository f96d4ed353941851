"""Caps on process counts, shared by both stages: a typo must not start a thousand processes."""

from __future__ import annotations

import os

# Loader workers per rank (stage 2) and reader/writer processes (stage 1): 4 x this machine's cores.
MAX_WORKERS = 4 * max(os.cpu_count() or 1, 1)


def memory_bytes() -> int:
    """The memory one process of this machine may use: physical memory, or less where a cgroup's
    limit or the address-space limit (ulimit -v) says so. Sizes read from a file are held to it
    before anything is allocated."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                total = min(total, int(fh.read().strip()))
        except (OSError, ValueError):       # absent, or "max"
            pass
    import resource
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return min(total, soft) if soft not in (resource.RLIM_INFINITY, -1) and soft > 0 else total


def shared_memory_bytes() -> int:
    """Free space for shared memory (/dev/shm, where the loader's batch slots live), at most memory_bytes()."""
    try:
        st = os.statvfs("/dev/shm")
        return min(st.f_bavail * st.f_frsize, memory_bytes())
    except OSError:
        return memory_bytes()


def gigabytes(n: float) -> str:
    """A byte count as people read it: '9.8 GB', '512 MB'."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
