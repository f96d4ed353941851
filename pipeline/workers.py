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
import multiprocessing.pool
import multiprocessing.util
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


def _quiet_worker(initializer, initargs) -> None:
    """A worker ignores Ctrl-C (its parent stops it, no KeyboardInterrupt traceback from each) and
    dies silently on SIGTERM; either is safe because the pool's clean-up (_Pool) never waits on
    the queues a dying worker may leave half-used."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if initializer is not None:
        initializer(*initargs)


def _kill_workers(workers: list, worker_handler) -> None:
    """Stop a pool at once: no replacement workers, SIGKILL each (they print nothing), reap them."""
    worker_handler._state = multiprocessing.pool.TERMINATE
    if worker_handler is not threading.current_thread():
        worker_handler.join(timeout=1)      # it replaces dead workers: stopped first, none is spawned later
    for p in workers:
        if p.exitcode is None:
            p.kill()
    for p in workers:
        p.join()


class _Pool(multiprocessing.pool.Pool):
    """A Pool whose clean-up (terminate(), leaving its `with` block, or its finalizer at exit when
    neither ran, e.g. in a generator never resumed) kills its workers and never touches the queues
    again: the stock one drains the task queue under its lock and waits for the result reader,
    both of which hang when a worker stopped mid-message. Its semaphores are still freed at exit
    (no leaked-semaphore warnings). Used once the results are in, and on an interrupt."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._terminate.cancel()
        self._terminate = multiprocessing.util.Finalize(self, _kill_workers, args=(self._pool, self._worker_handler),
                                                        exitpriority=15)


def spawn_pool(workers: int, initializer=None, initargs=(), **kwargs):
    """A `multiprocessing.Pool` of spawned workers that never re-run the caller's script (no
    `maxtasksperchild`: a worker started later, outside `script_hidden`, would), stopped at once
    by terminate() (and by leaving its `with` block)."""
    with script_hidden():
        return _Pool(workers, initializer=_quiet_worker, initargs=(initializer, initargs),
                     context=mp.get_context("spawn"), **kwargs)


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
