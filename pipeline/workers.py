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
import sys


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


def spawn_pool(workers: int, **kwargs):
    """A `multiprocessing.Pool` of spawned workers that never re-run the caller's script (no
    `maxtasksperchild`: a worker started later, outside `script_hidden`, would)."""
    with script_hidden():
        return mp.get_context("spawn").Pool(workers, **kwargs)
