"""Worker processes for the library's parallel parts (validation, statistics, shard writing, corpora).

They are spawned (a clean interpreter: no forked threads or zarr handles), and spawn normally
re-runs the parent's main script in every worker before it takes a job. A user's script or
notebook that calls the API without an `if __name__ == "__main__":` guard would then run again
in each worker (and start workers of its own). The workers run only this project's functions,
never the script's, so the script is hidden from them while they start: the API is safe to call
from a plain script.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import signal
import sys
import threading


@contextlib.contextmanager
def script_hidden():
    """While processes start: spawn's preparation data names no main module, so workers skip it."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


def _exit_quietly(signum, frame) -> None:
    raise SystemExit(128 + signum)      # an int: no message; `with` blocks release the pool's queue locks


def _quiet_worker(initializer, initargs) -> None:
    """A worker ignores Ctrl-C (its parent stops it: Pool.terminate), and leaves on SIGTERM through
    SystemExit, not by dying at once: a worker killed while holding the pool's task-queue lock
    would hang the parent's Pool.terminate, and Ctrl-C would print a traceback from every worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_quietly)
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(workers: int, initializer=None, initargs=(), **kwargs):
    """A `multiprocessing.Pool` of spawned workers that never re-run the caller's script (no
    `maxtasksperchild`: a worker started later, outside `script_hidden`, would)."""
    with script_hidden():
        return mp.get_context("spawn").Pool(workers, initializer=_quiet_worker, initargs=(initializer, initargs),
                                            **kwargs)


@contextlib.contextmanager
def sigterm_interrupts():
    """While the block runs (in the main thread), SIGTERM raises KeyboardInterrupt as Ctrl-C does:
    the pools' `with` blocks then stop their workers and free their semaphores, instead of the
    process dying under them (worker tracebacks on broken pipes, leaked-semaphore warnings)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
