"""Computing the per-dimension feature statistics (`manifest.Stats`) from the training splits only
(float64 sums, merged by addition), and saving them beside the shards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from . import atomic
from .manifest import Stats
from .errors import PhonerecError
from .store import CHUNK_FRAMES, CorpusStore
from .features import FEATURE_DIM
from .workers import spawn_pool

STATS_JSON = "stats.json"
MIN_STD = 1e-8


def fingerprint(store_fingerprints: list[str], cmn: bool) -> str:
    h = hashlib.sha256(f"stats-v1|cmn={int(cmn)}".encode())
    for f in store_fingerprints:
        h.update(f.encode())
    return h.hexdigest()


def _utterance_blocks(offsets: np.ndarray) -> list[tuple[int, int]]:
    """Ranges of whole utterances of about one chunk each, so reads follow storage order."""
    blocks, start = [], 0
    n = len(offsets) - 1
    while start < n:
        stop = int(np.searchsorted(offsets, offsets[start] + CHUNK_FRAMES, side="left"))
        stop = min(max(stop, start + 1), n)
        blocks.append((start, stop))
        start = stop
    return blocks


def _partial(job: tuple[str, int, int, bool]) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, sum, sum of squares) over utterances [a, b) of one store."""
    path, a, b, cmn = job
    g = zarr.open_group(path, mode="r")
    offsets = g["offsets"][a:b + 1]
    x = g["features"][int(offsets[0]):int(offsets[-1])].astype(np.float64)
    if cmn:
        lens = np.diff(offsets)
        means = np.add.reduceat(x, (offsets[:-1] - offsets[0]), axis=0) / lens[:, None]
        x -= np.repeat(means, lens, axis=0)
    return len(x), x.sum(axis=0), np.square(x).sum(axis=0)


def compute(stores: list[CorpusStore], *, cmn: bool = False, workers: int = 2, progress: bool = True) -> Stats:
    jobs = []
    for s in stores:
        for a, b in _utterance_blocks(s.offsets):
            jobs.append((str(s.path), a, b, cmn))
    dim = stores[0].feature_dim if stores else FEATURE_DIM
    count, total, total_sq = 0, np.zeros(dim), np.zeros(dim)
    bar = tqdm(total=len(jobs), desc="statistics", unit="chunk", disable=not progress, leave=False)
    if workers <= 1:
        results = map(_partial, jobs)
    else:
        pool = spawn_pool(workers)
        results = pool.imap(_partial, jobs)   # ordered: the float64 sum is the same for any worker count
    try:
        for n, s1, s2 in results:
            count += n
            total += s1
            total_sq += s2
            bar.update()
    finally:
        bar.close()
        if workers > 1:              # every result is in (or an interrupt): no task left to wait for
            pool.terminate()
    if count == 0:
        raise ValueError("no training frames to compute statistics from (every utterance rejected?)")
    mean = total / count
    var = np.maximum(total_sq / count - mean ** 2, 0.0)
    std = np.sqrt(var)
    std[std < MIN_STD] = 1.0   # a constant dimension is centred, not blown up
    return Stats(count=count, mean=mean, std=std, cmn=cmn, splits=[s.split for s in stores],
                 fingerprint=fingerprint([s.fingerprint for s in stores], cmn))


def save(stats: Stats, shards_dir: str | Path) -> None:
    """Readable JSON beside the shards, and a zarr copy with the corpus stores."""
    root = Path(shards_dir)
    g = zarr.open_group(str(root / "store" / "stats.zarr"), mode="w")
    g.create_array("mean", data=stats.mean)
    g.create_array("std", data=stats.std)
    g.attrs.update(stats.to_json())
    atomic.write_json(root / STATS_JSON, stats.to_json())


class StatsError(PhonerecError, ValueError):
    """A statistics file that cannot be read (a build recomputes it)."""


def load(shards_dir: str | Path) -> Stats | None:
    """The saved statistics; None when there are none, StatsError when the file is damaged."""
    p = Path(shards_dir) / STATS_JSON
    if not p.is_file():
        return None
    import json
    try:
        stats = Stats.from_json(json.loads(p.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StatsError(f"{p} is damaged ({type(exc).__name__}: {exc})") from None
    if stats.mean.shape != stats.std.shape or not (np.isfinite(stats.mean).all() and np.isfinite(stats.std).all()):
        raise StatsError(f"{p} is damaged (mean and std of other shapes, or not finite)")
    return stats
