"""Per-split zarr corpus store: every utterance's raw features in one [frames, 15] array.

The store is written in length order (frames from each file's .npy header, ties by file
name), so every shard later reads one contiguous slice and statistics read in storage order.
Layout: ``features`` float32 [F, 15] in ~2 MB chunks, ``offsets`` int64 [N+1], ``index``
int64 [N] (position in sorted-file-name order), ``ids`` str [N], and for labelled splits
``labels`` uint8 [L] with ``label_offsets`` int64 [N+1]. Attributes record the input
fingerprint and every rejection.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from .atomic import disk_full, disk_full_error
from .errors import PhonerecError
from .layout import SplitFiles, read_template, safe_text
from .npyfile import UtteranceError, npy_frames
from .validate import Rejection, load_utterance
from .features import FEATURE_DIM
from .vocab import F22, Inventory
from .workers import spawn_pool

CHUNK_FRAMES = 32768          # 32768 x 15 x 4 B ~= 1.97 MB per chunk
STORE_FORMAT = 1


class StrictError(PhonerecError):
    """Raised on the first rejection under --strict."""


def store_path(shards_dir: str | Path, split: str) -> Path:
    return Path(shards_dir) / "store" / f"{split}.zarr"


@dataclass
class CorpusStore:
    """Read side of a finished store; cheap to open (metadata only)."""

    path: Path
    split: str
    labelled: bool
    fingerprint: str
    ids: list[str]
    offsets: np.ndarray
    index: np.ndarray
    label_offsets: np.ndarray | None
    rejections: list[Rejection]
    inputs: int
    _group: zarr.Group

    @classmethod
    def open(cls, path: str | Path) -> CorpusStore:
        g = zarr.open_group(str(path), mode="r")
        a = g.attrs
        labelled = bool(a["labelled"])
        return cls(
            path=Path(path), split=a["split"], labelled=labelled, fingerprint=a["fingerprint"],
            ids=[str(s) for s in g["ids"][:]] if a["num_utterances"] else [],
            offsets=g["offsets"][:], index=g["index"][:],
            label_offsets=g["label_offsets"][:] if labelled else None,
            rejections=[Rejection(*r) for r in a["rejections"]], inputs=int(a["inputs"]), _group=g,
        )

    @property
    def template(self) -> dict | None:
        """The split's submission template: {"file", "header", "rows"} (see layout.read_template)."""
        return self._group.attrs.get("template")

    @property
    def feature_dim(self) -> int:
        return int(self._group["features"].shape[1])

    @property
    def inventory(self) -> Inventory:
        """The symbol inventory its transcripts were encoded with (stores without one: F22's)."""
        return Inventory.from_json(self._group.attrs.get("inventory") or {})

    @property
    def frames(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def label_lens(self) -> np.ndarray:
        if self.label_offsets is None:
            return np.zeros(len(self.ids), dtype=np.int64)
        return np.diff(self.label_offsets)

    def read_frames(self, start_utt: int, stop_utt: int) -> np.ndarray:
        """Features of utterances [start_utt, stop_utt) as one contiguous block."""
        return self._group["features"][int(self.offsets[start_utt]):int(self.offsets[stop_utt])]

    def read_labels(self, start_utt: int, stop_utt: int) -> np.ndarray:
        lo = self.label_offsets
        return self._group["labels"][int(lo[start_utt]):int(lo[stop_utt])]


def store_files(root: Path) -> dict[str, int]:
    """Size of every file of a store but its root metadata (which records this): a missing chunk
    would read back as zeros, so a store is trusted only while all of them are there."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            if rel != "zarr.json":
                out[rel] = p.stat().st_size
    return out


def store_state(path: Path, fingerprint: str) -> str:
    """'current' (built from exactly these inputs and complete: ingest can be skipped), 'absent',
    'stale' (other inputs) or 'damaged' (unreadable, unfinished, or a file missing or resized)."""
    if not Path(path).exists():
        return "absent"
    try:
        a = zarr.open_group(str(path), mode="r").attrs
        if a.get("fingerprint") != fingerprint or a.get("format") != STORE_FORMAT:
            return "stale"
        ok = a.get("complete") is True and a.get("files") == store_files(Path(path))
        return "current" if ok else "damaged"
    except Exception:  # noqa: BLE001 - a store whose metadata cannot be read is rebuilt
        return "damaged"


def recorded_width(path: Path) -> int | None:
    """The feature width a store records (stores from before widths were recorded: F22's), or None."""
    try:
        return int(zarr.open_group(str(path), mode="r").attrs.get("feature_dim", FEATURE_DIM))
    except Exception:  # noqa: BLE001 - no store, or an unreadable one
        return None


def store_fingerprint(files: SplitFiles, exclude: dict[str, str] | None = None, dim: int = FEATURE_DIM,
                      inventory: Inventory = F22) -> str:
    """The inputs' fingerprint, plus the utterances excluded by other splits (duplicate ids), the
    corpus's width and the symbol inventory: a store is current only for the same files, exclusions,
    width and inventory (F22's 15 and F22's inventory add nothing, so stores written before either
    was chosen stay current)."""
    base = files.fingerprint()
    if dim != FEATURE_DIM:
        base = hashlib.sha256(f"{base}|dim|{dim}".encode()).hexdigest()
    if not inventory.matches(F22):
        table = json.dumps(inventory.to_json(), ensure_ascii=True, sort_keys=True)
        base = hashlib.sha256(f"{base}|inventory|{table}".encode()).hexdigest()
    if not exclude:
        return base
    extra = json.dumps(sorted(exclude.items()), ensure_ascii=True)
    return hashlib.sha256(f"{base}|exclude|{extra}".encode()).hexdigest()


def _read_one(job: tuple[int, str, str | None, bool, int, Inventory]):
    i, mfcc, transcript, labelled, dim, inventory = job
    try:
        feats, labels = load_utterance(Path(mfcc), Path(transcript) if transcript else None, labelled, dim,
                                       inventory)
        return i, feats, labels, None, None
    except UtteranceError as exc:
        return i, None, None, str(exc), str(exc.path or mfcc)
    except MemoryError:
        return i, None, None, "features too large to load (out of memory)", mfcc
    except Exception as exc:  # noqa: BLE001 - last resort: one unexpected file must not stop the build
        return i, None, None, f"unreadable ({type(exc).__name__}: {exc})", mfcc


def _read_all(jobs: list, workers: int):
    """`_read_one` of every job, in job order. With workers, double-buffered windows: the pool
    reads window k+1 while the caller writes window k, so at most two windows of arrays are held."""
    if workers <= 1:
        yield from map(_read_one, jobs)
        return
    window = 64 * workers
    with spawn_pool(workers) as pool:
        pending = None
        for s in range(0, len(jobs) + window, window):
            nxt = pool.map_async(_read_one, jobs[s:s + window], chunksize=8) if s < len(jobs) else None
            if pending is not None:
                yield from pending.get()
            pending = nxt


class _Rejections(list):
    """The split's rejections in order; under --strict the first one stops the build."""

    def __init__(self, split: str, strict: bool, on_reject: Callable[[Rejection], None] | None):
        super().__init__()
        self.split, self.strict, self.on_reject = split, strict, on_reject

    def add(self, uid: str, path, reason: str) -> None:
        r = Rejection(self.split, uid, safe_text(str(path)), reason)
        if self.strict:
            raise StrictError(f"{r.path}: {r.reason} (split {r.split}, utterance {r.uid}); "
                              "rerun without --strict to skip and report such utterances")
        self.append(r)
        if self.on_reject:
            self.on_reject(r)


class _StoreWriter:
    """Appends utterances to a new store's arrays: features in chunk-aligned writes, the rest
    (offsets, original index, ids, labels) at the end."""

    def __init__(self, g: zarr.Group, capacity: int, labelled: bool, dim: int):
        self.g, self.labelled, self.dim = g, labelled, dim
        self.feats = g.create_array("features", shape=(max(capacity, 1), dim),
                                    chunks=(CHUNK_FRAMES, dim), dtype="float32")
        self.buf: list[np.ndarray] = []
        self.buf_frames = self.written = 0
        self.offsets, self.index, self.ids, self.labels, self.label_offsets = [0], [], [], [], [0]

    def add(self, i: int, uid: str, feats: np.ndarray, labels: np.ndarray | None) -> None:
        self.buf.append(feats)
        self.buf_frames += len(feats)
        self.offsets.append(self.offsets[-1] + len(feats))
        self.index.append(i)
        self.ids.append(uid)
        if labels is not None:
            self.labels.append(labels)
            self.label_offsets.append(self.label_offsets[-1] + len(labels))
        if self.buf_frames >= CHUNK_FRAMES:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.buf:
            return
        block = np.concatenate(self.buf)
        n = len(block) if final else (len(block) // CHUNK_FRAMES) * CHUNK_FRAMES  # chunk-aligned writes
        if n == 0:
            return
        if self.written + n > self.feats.shape[0]:
            self.feats.resize((self.written + n, self.dim))
        self.feats[self.written:self.written + n] = block[:n]
        self.written += n
        rest = block[n:]
        self.buf, self.buf_frames = ([rest] if len(rest) else []), len(rest)

    def finish(self) -> int:
        """Write everything still held; returns the number of utterances."""
        self._flush(final=True)
        self.feats.resize((self.written, self.dim))
        g, n = self.g, len(self.ids)
        g.create_array("offsets", data=np.asarray(self.offsets, dtype=np.int64))
        g.create_array("index", data=np.asarray(self.index, dtype=np.int64))
        ids_arr = g.create_array("ids", shape=(n,), dtype=str)
        if n:
            ids_arr[:] = np.asarray(self.ids, dtype=str)
        if self.labelled:
            g.create_array("labels", data=np.concatenate(self.labels) if self.labels else np.zeros(0, np.uint8))
            g.create_array("label_offsets", data=np.asarray(self.label_offsets, dtype=np.int64))
        return n


def ingest(files: SplitFiles, path: str | Path, *, workers: int = 2, strict: bool = False,
           progress: bool = True, on_reject: Callable[[Rejection], None] | None = None,
           exclude: dict[str, str] | None = None, dim: int = FEATURE_DIM,
           shapes: list[tuple[int, ...] | None] | None = None, inventory: Inventory = F22) -> CorpusStore:
    """Read, validate and consolidate one split of a corpus `dim` features wide into a zarr store,
    atomically; transcripts are encoded with `inventory` (in the reader processes).

    `exclude` maps utterance ids to a reason: those are rejected without being read (duplicate
    ids kept in another split). `shapes`: the files' header shapes when the caller read them
    already (parallel to files.mfcc)."""
    path = Path(path)
    fingerprint = store_fingerprint(files, exclude, dim, inventory)
    exclude = {**files.problems, **(exclude or {})}     # names that are no readable file, duplicates
    n_in = len(files.ids)
    frames = (s[0] if s else 0 for s in shapes) if shapes is not None else map(npy_frames, files.mfcc)
    header_frames = np.fromiter(frames, dtype=np.int64, count=n_in)
    order = np.lexsort((np.arange(n_in), header_frames))        # by length, ties by file name
    jobs = [(int(i), str(files.mfcc[i]), str(files.transcripts[i]) if files.transcripts[i] else None,
             files.labelled, dim, inventory) for i in order if files.ids[i] not in exclude]
    rejections = _Rejections(files.name, strict, on_reject)
    template = read_template(files.template)[0] if files.template is not None else None
    for uid, tpath in files.orphans:
        rejections.add(uid, tpath, "transcript without features")
    for i, uid in enumerate(files.ids):
        if uid in exclude:
            rejections.add(uid, files.mfcc[i], exclude[uid])

    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    bar = tqdm(total=n_in, desc=f"ingest {files.name}", unit="utt", disable=not progress, leave=False)
    try:
        g = zarr.open_group(str(tmp), mode="w")
        writer = _StoreWriter(g, int(header_frames.clip(min=0).sum()), files.labelled, dim)
        for i, feats, lab, reason, bad_path in _read_all(jobs, workers):
            if reason is None:
                writer.add(i, files.ids[i], feats, lab)
            else:
                rejections.add(files.ids[i], bad_path, reason)
            bar.update()
        n = writer.finish()
        g.attrs.update({
            "format": STORE_FORMAT, "split": files.name, "labelled": files.labelled, "feature_dim": dim,
            "fingerprint": fingerprint, "num_utterances": n, "inputs": n_in + len(files.orphans),
            "rejections": [list(r) for r in rejections], "template": template,
            "inventory": inventory.to_json(), "files": store_files(tmp), "complete": True,
        })
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(exc):
            raise disk_full_error(exc, f"the corpus store {path}") from exc
        raise
    finally:
        bar.close()
    _swap_dir(tmp, path)
    return CorpusStore.open(path)


def _swap_dir(tmp: Path, final: Path) -> None:
    """Replace a directory atomically enough: the final name is never half-written."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
