"""Length-sorted WebDataset shards of one split, planned from the store and written in parallel.

Order: by length with seeded random tie-breaking, so each shard covers a narrow length range
and any batch drawn from one shard pads almost nothing. Shards are cut at equal byte
quantiles into ``max(ceil(bytes / target), min(min_shards, N))`` pieces.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import atomic, manifest as mf, remote
from .features import bytes_per_frame
from .manifest import Stats
from .reading import sha256_file
from .shardformat import FEATS, LABELS, make_keys, member_offsets, sample_members, write_tar
from .store import CorpusStore
from .vocab import ctc_min_frames_ragged
from .workers import spawn_pool

SHARD_FORMAT = 1
PLAN_NAME = ".plan.json"
TAR_OVERHEAD = 2 * 512 + 2 * 128 + 512   # tar headers, npy headers and padding per utterance (estimate)


@dataclass(frozen=True)
class ShardOptions:
    seed: int = 0
    target_mb: float = 16.0
    min_shards: int = 8


def plan_order(frames: np.ndarray, seed: int) -> np.ndarray:
    """Store positions in shard order: by length, ties broken by a seeded permutation."""
    tie = np.random.default_rng(seed).random(len(frames))
    return np.lexsort((tie, frames))


def cut_points(sizes: np.ndarray, target_bytes: float, min_shards: int) -> np.ndarray:
    """Shard boundaries (len = shards + 1) at equal cumulative-size quantiles."""
    n = len(sizes)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    total = float(sizes.sum())
    k = min(max(int(np.ceil(total / target_bytes)), min(min_shards, n), 1), n)
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, total * np.arange(1, k) / k, side="left") + 1
    # Quantiles of very uneven sizes can coincide; move such cuts apart (strictly increasing, within
    # [1, n-1]) so the split really gets k shards, as --min-shards promises.
    j = np.arange(k - 1)
    cuts = np.minimum(np.maximum.accumulate(np.clip(cuts, 1, n - 1) - j), n - k + 1) + j if k > 1 else cuts
    return np.concatenate([[0], cuts, [n]]).astype(np.int64)


def fingerprint(store: CorpusStore, stats: Stats, opts: ShardOptions) -> str:
    h = hashlib.sha256(f"shards-v{SHARD_FORMAT}|{store.fingerprint}|{stats.fingerprint}|"
                       f"{opts.seed}|{opts.target_mb}|{opts.min_shards}".encode())
    return h.hexdigest()


def shard_name(split: str, i: int) -> str:
    return f"{split}-{i:06d}.tar"


def is_shard_name(split: str, name: str) -> bool:
    """A name `shard_name` makes for this split (a shard of ours, of any plan)."""
    return re.fullmatch(re.escape(split) + r"-\d{6}\.tar", name) is not None


def file_digests(path: Path) -> tuple[str, int]:
    """(sha256, crc32) of a file in one read: the manifest keeps both."""
    h, crc = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            crc = zlib.crc32(chunk, crc)
    return h.hexdigest(), crc


_STORES: dict[tuple[str, str], CorpusStore] = {}


def _store(path: str, fingerprint: str) -> CorpusStore:
    # Opened lazily inside each worker process (zarr handles must not cross a fork). Keyed by the
    # store's fingerprint too: a store rebuilt at the same path (in this same process, e.g. with
    # workers=1) must not be read through the stale offsets of the old one.
    if (path, fingerprint) not in _STORES:
        _STORES[(path, fingerprint)] = CorpusStore.open(path)
    return _STORES[(path, fingerprint)]


def _write_shard(job) -> tuple[mf.ShardInfo, dict[str, int]]:
    store_path, store_fp, out, positions, keys, stats_json = job
    store = _store(store_path, store_fp)
    stats = Stats.from_json(stats_json)
    positions = np.asarray(positions)
    lo, hi = int(positions.min()), int(positions.max()) + 1
    block = store.read_frames(lo, hi)                       # one contiguous read
    base = int(store.offsets[lo])
    labels = store.read_labels(lo, hi) if store.labelled else None
    lbase = int(store.label_offsets[lo]) if store.labelled else 0
    members, frames = [], []
    for pos, key in zip(positions, keys):
        a, b = int(store.offsets[pos]) - base, int(store.offsets[pos + 1]) - base
        feats = stats.normalize(block[a:b])
        lab = None
        if labels is not None:
            la, lb = int(store.label_offsets[pos]) - lbase, int(store.label_offsets[pos + 1]) - lbase
            lab = labels[la:lb]
        members.extend(sample_members(key, feats, lab))
        frames.append(b - a)
    path = Path(out)
    offsets = write_tar(path, members)
    sha, crc = file_digests(path)
    info = mf.ShardInfo(name=path.name, sha256=sha, utterances=len(keys), frames=int(sum(frames)),
                        min_frames=int(min(frames)), max_frames=int(max(frames)), bytes=path.stat().st_size, crc32=crc)
    return info, offsets


def _read_plan(plan_file: Path, fp: str) -> tuple[bool, set[str]]:
    """(whether the plan file is of this same plan, the shard names it lists); a missing or
    damaged plan file is no plan."""
    try:
        plan = json.loads(plan_file.read_text())
        names = plan.get("shards", [])
        return plan.get("fingerprint") == fp, {n for n in names if isinstance(n, str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return False, set()


def _member_columns(names, cuts, keys, offsets, labelled) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance (manifest order): where its feats and labels members start in its tar."""
    feats_at = np.full(len(keys), -1, dtype=np.int64)
    labels_at = np.full(len(keys), -1, dtype=np.int64)
    for i, name in enumerate(names):
        at = offsets[name]
        for r in range(int(cuts[i]), int(cuts[i + 1])):
            feats_at[r] = at[f"{keys[r]}.{FEATS}"]
            if labelled:
                labels_at[r] = at[f"{keys[r]}.{LABELS}"]
    return feats_at, labels_at


def _previous(shards_dir, split: str, fp: str) -> tuple[mf.Manifest | None, set[str]]:
    """The split's manifest if it is of this same plan (else None), and the shard names any
    readable manifest of the split lists (files of ours, which a cleanup may remove)."""
    try:
        old = mf.load(shards_dir, split)
    except mf.ManifestError:
        return None, set()
    return (old if old.fingerprint == fp else None), {s.name for s in old.shards}


def _complete(old: mf.Manifest) -> bool:
    """Every shard is there at its recorded size, and the manifest has today's columns (one from
    before the crc32 or ctc_len columns is rewritten; its shards are kept)."""
    return old.ctc_lens is not None and all(p.is_file() and p.stat().st_size == s.bytes and s.crc32 is not None
                                            for p, s in zip(old.shard_paths(), old.shards))


def _prepare_folder(out_dir: Path, split: str, fp: str, names: list[str], old: mf.Manifest | None,
                    old_names: set[str]) -> None:
    """Remove what this plan cannot trust, then record the plan.

    A plan file records which shard set is being written: finished shards of the same plan
    survive an interruption; stale shards of ours are removed. It stays after a finished run too,
    so a deleted manifest or shard later costs only the missing pieces; shards that a manifest of
    this same plan describes must still match their recorded size and sha256. Only files of ours
    are ever removed: names of this or an earlier plan or manifest, our shard-name pattern, our
    temp names; anything else in the folder is the user's."""
    plan_file = out_dir / PLAN_NAME
    same_plan, planned = _read_plan(plan_file, fp)
    known = {s.name: s for s in old.shards} if old is not None else {}
    same_plan = same_plan or old is not None
    (out_dir / mf.MANIFEST_NAME).unlink(missing_ok=True)
    ours = set(names) | planned | old_names
    for p in out_dir.glob("*.tar"):
        if not (p.name in ours or is_shard_name(split, p.name)):
            continue
        if not same_plan or p.name not in names or (p.name in known and (
                p.stat().st_size != known[p.name].bytes or sha256_file(p) != known[p.name].sha256)):
            p.unlink()
    for p in out_dir.glob(".*.tmp*"):
        if atomic.is_temp_name(p.name):
            p.unlink()
    atomic.write_json(plan_file, {"fingerprint": fp, "shards": names})


def _write_missing(jobs: list, total: int, split: str, workers: int, progress: bool
                   ) -> tuple[dict[str, mf.ShardInfo], dict[str, dict[str, int]]]:
    """Write the shards of `jobs` (in parallel): their infos and member offsets by name."""
    infos, offsets = {}, {}
    bar = tqdm(total=total, initial=total - len(jobs), desc=f"shards {split}", unit="shard",
               disable=not progress, leave=False)
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = map(_write_shard, jobs)
            for info, at in results:
                infos[info.name], offsets[info.name] = info, at
                bar.update()
        else:
            with spawn_pool(workers) as pool:
                for info, at in pool.imap_unordered(_write_shard, jobs):
                    infos[info.name], offsets[info.name] = info, at
                    bar.update()
    finally:
        bar.close()
    return infos, offsets


def _finished_info(path: Path, frames: np.ndarray) -> tuple[mf.ShardInfo, dict[str, int]]:
    """Info and member offsets of a shard an interrupted run of this same plan finished."""
    sha, crc = file_digests(path)
    info = mf.ShardInfo(name=path.name, sha256=sha, utterances=len(frames), frames=int(frames.sum()),
                        min_frames=int(frames.min()), max_frames=int(frames.max()), bytes=path.stat().st_size,
                        crc32=crc)
    return info, member_offsets(path)


def build_split(store: CorpusStore, stats: Stats, shards_dir: str | Path, opts: ShardOptions, *,
                workers: int = 2, progress: bool = True) -> mf.Manifest:
    """Write (or finish writing) the shards and manifest of one split; idempotent and resumable."""
    out_dir = Path(remote.confined(shards_dir, store.split))
    out_dir.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(store, stats, opts)
    old, old_names = _previous(shards_dir, store.split, fp)
    if old is not None and _complete(old):
        return old
    frames = store.frames
    order = plan_order(frames, opts.seed)
    sizes = frames[order] * bytes_per_frame(store.feature_dim) + store.label_lens[order] + TAR_OVERHEAD
    cuts = cut_points(sizes, opts.target_mb * 2**20, opts.min_shards)
    names = [shard_name(store.split, i) for i in range(len(cuts) - 1)]
    _prepare_folder(out_dir, store.split, fp, names, old, old_names)

    ids_sorted = [store.ids[i] for i in order]
    keys = make_keys(ids_sorted)
    rows = [(int(cuts[i]), int(cuts[i + 1])) for i in range(len(names))]
    jobs = [(str(store.path), store.fingerprint, str(out_dir / name), order[a:b].tolist(), keys[a:b],
             stats.to_json()) for name, (a, b) in zip(names, rows)
            if not (out_dir / name).is_file()]         # else finished by an interrupted run of this plan
    infos, offsets = _write_missing(jobs, len(names), store.split, workers, progress)
    for name, (a, b) in zip(names, rows):
        if name not in infos:
            infos[name], offsets[name] = _finished_info(out_dir / name, frames[order[a:b]])
    feats_at, labels_at = _member_columns(names, cuts, keys, offsets, store.labelled)
    ctc = ctc_min_frames_ragged(store.read_labels(0, len(frames)), store.label_offsets) \
        if store.labelled else np.zeros(len(frames), dtype=np.int64)
    m = mf.Manifest(
        split=store.split, labelled=store.labelled, seed=opts.seed, stats=stats,
        shards=[infos[name] for name in names], ids=ids_sorted, keys=keys, frames=frames[order].astype(np.int64),
        label_lens=store.label_lens[order].astype(np.int64), index=store.index[order].astype(np.int64),
        inputs=store.inputs, rejected=len(store.rejections), fingerprint=fp, directory=out_dir,
        feats_at=feats_at, labels_at=labels_at, ctc_lens=ctc[order].astype(np.int64),
        feature_dim=store.feature_dim, template=store.template, inventory=store.inventory,
    )
    mf.save(m, shards_dir)
    return m
