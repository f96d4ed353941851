"""Streaming the shards of an epoch plan: one IterableDataset per rank, batches built in workers.

Workers read whole shards (never a whole split) into memory, check each file's size and checksum
(crc32; sha256 for manifests without one) against the manifest, slice every sample out of the
bytes at the offsets the manifest recorded (or parse the tar with webdataset's iterators), and
yield packed, padded batches in exactly the planned order, so the DataLoader's round-robin over
workers reproduces EpochPlan.sequence().
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import math
import signal
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_iterator

from pipeline import remote
from pipeline.features import STORAGE_DTYPE
from pipeline.limits import shared_memory_bytes
from pipeline.manifest import Manifest
from pipeline.reading import ShardReader, ShardReadError, error_message, repair_hint
from pipeline.remote import FetchPolicy
from pipeline.shardformat import FEATS, LABELS, decode_sample, slice_member

from .host import release_free_memory
from .plan import EpochPlan

# A packed batch's layout (pack/unpack/packed_size): int64 [3, B], features [B, T, F] in the
# shards' storage dtype, uint8 labels [B, L].
_INT_BYTES = np.dtype(np.int64).itemsize
_FEATURE_BYTES = STORAGE_DTYPE.itemsize
_TORCH_STORAGE_DTYPE = torch.from_numpy(np.zeros(0, STORAGE_DTYPE)).dtype


def shard_label(m: Manifest, s: int) -> str:
    """'<split>/<file>' of shard s, for reports (merged manifests already carry the split)."""
    name = m.shards[s].name
    return name if "/" in name else f"{m.split}/{name}"


def damage_report(found: dict[str, str]) -> str:
    """'N damaged shard(s): <split>/<file>: why; ...' for one-line errors (training, prediction)."""
    return f"{len(found)} damaged shard(s): " + "; ".join(f"{k}: {v}" for k, v in sorted(found.items()))


def without_shards(m: Manifest, drop: set[int] | list[int]) -> Manifest:
    """The manifest without these shards and their utterances (shard order otherwise kept)."""
    drop = set(drop)
    if not drop:
        return m
    start = m.shard_start
    keep = [s for s in range(len(m.shards)) if s not in drop]
    rows = np.concatenate([np.arange(start[s], start[s + 1]) for s in keep] or [np.zeros(0, np.int64)])
    rows = rows.astype(np.int64)
    return dataclasses.replace(
        m, shards=[m.shards[s] for s in keep], ids=[m.ids[r] for r in rows], keys=[m.keys[r] for r in rows],
        frames=m.frames[rows], label_lens=m.label_lens[rows], index=m.index[rows],
        feats_at=None if m.feats_at is None else m.feats_at[rows],
        labels_at=None if m.labels_at is None else m.labels_at[rows],
        ctc_lens=None if m.ctc_lens is None else m.ctc_lens[rows])


@dataclass
class ShardSource(ShardReader):
    """The loaders' ShardReader (pipeline/reading.py), whose reads are counted in `counters` (int64
    [rows, COUNTERS], shared memory: row 0 is this process, row w + 1 DataLoader worker w), so the
    trainer can report them whichever process fetched."""

    counters: torch.Tensor | None = None

    @classmethod
    def create(cls, policy: FetchPolicy, workers: int) -> ShardSource:
        rows = torch.zeros((max(workers, 0) + 1, len(remote.COUNTERS)), dtype=torch.int64).share_memory_()
        return cls(policy, rows)

    def count(self, name: str, n: int = 1) -> None:
        if self.counters is not None:
            info = get_worker_info()
            row = min(info.id + 1 if info is not None else 0, self.counters.shape[0] - 1)
            self.counters[row, remote.COUNTERS.index(name)] += int(n)

    def totals(self) -> dict[str, int]:
        """Every counter summed over the processes (this one and its loader workers)."""
        sums = self.counters.sum(0).tolist() if self.counters is not None else [0] * len(remote.COUNTERS)
        return dict(zip(remote.COUNTERS, (int(v) for v in sums)))


def _samples(data: bytes, url: str):
    def files():
        for f in tar_file_iterator(io.BytesIO(data)):
            f["__url__"] = url
            yield f
    return group_by_keys(files())


@dataclass
class Batch:
    feats: torch.Tensor          # STORAGE_DTYPE (float16) [B, T, D] (D: the manifest's feature_dim), zero-padded
    lengths: torch.Tensor        # int64 [B]
    labels: torch.Tensor         # int64 [B, L], zero-padded (empty for unlabelled splits)
    label_lengths: torch.Tensor  # int64 [B]
    rows: torch.Tensor           # int64 [B]: manifest rows (ids, original index)

    def to(self, device, non_blocking: bool = True) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in
                       (self.feats, self.lengths, self.labels, self.label_lengths, self.rows)))

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())


def _slice_shard(m: Manifest, s: int, data: bytes) -> dict[int, tuple[np.ndarray, np.ndarray | None]] | None:
    """Shard s's samples as zero-copy views at the offsets the manifest recorded; None when the
    manifest has no offsets or any member is not exactly where and what it says (then the tar is
    parsed, which names the problem)."""
    if m.feats_at is None or m.labels_at is None or not m.shards[s].sha256:
        return None
    start = m.shard_start
    out = {}
    stored, u8 = STORAGE_DTYPE.newbyteorder("<"), np.dtype("|u1")
    for r in range(int(start[s]), int(start[s + 1])):
        key = m.keys[r]
        feats = slice_member(data, int(m.feats_at[r]), f"{key}.{FEATS}", (int(m.frames[r]), m.feature_dim), stored)
        if feats is None:
            return None
        labels = None
        if m.labelled:
            labels = slice_member(data, int(m.labels_at[r]), f"{key}.{LABELS}", (int(m.label_lens[r]),), u8)
            if labels is None:
                return None
        out[r] = (feats, labels)
    return out


def _parse_shard(m: Manifest, s: int, data: bytes, path: str) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    start = m.shard_start
    expected = {m.keys[r]: r for r in range(int(start[s]), int(start[s + 1]))}
    out: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    try:
        for sample in _samples(data, str(path)):
            key, feats, labels = decode_sample(sample)
            r = expected.get(key)
            if r is None or r in out:
                raise ShardReadError(f"{path}: unexpected or repeated sample {key!r}; {repair_hint(path)}")
            if feats.ndim != 2 or feats.shape[0] != m.frames[r] or feats.shape[1] != m.feature_dim or \
                    (m.labelled and (labels is None or len(labels) != m.label_lens[r])):
                raise ShardReadError(f"{path}: sample {key!r} does not match the manifest; {repair_hint(path)}")
            out[r] = (feats, labels)
    except ShardReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - tar/npy decoding errors of a damaged shard
        msg = " ".join(str(exc).split())[:300]
        raise ShardReadError(f"{path}: unreadable ({type(exc).__name__}: {msg}); {repair_hint(path)}") from None
    if len(out) != len(expected):
        raise ShardReadError(f"{path}: holds {len(out)} utterances, the manifest lists {len(expected)}; "
                             f"{repair_hint(path)}")
    return out


def read_shards(m: Manifest, shards: list[int],
                source: ShardSource | None = None) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Samples of these shards by manifest row, checked against the manifest."""
    source = source or ShardSource()
    out: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for s in shards:
        data = source.read(m, s)
        samples = _slice_shard(m, s, data)
        out.update(samples if samples is not None else _parse_shard(m, s, data, m.shard_location(s)))
    return out


def _buffer(n: int) -> torch.Tensor:
    """n bytes for a packed batch; in a DataLoader worker allocated in shared memory directly,
    so handing it to the trainer passes a file descriptor instead of copying it there first.
    Not zeroed: pack() writes every byte."""
    if get_worker_info() is None:
        return torch.empty(n, dtype=torch.uint8)
    return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n), 0, (n,))


def packed_size(B: int, T: int, L: int, F: int) -> int:
    """Bytes of a packed batch (pack's layout): make_ring sizes its slots with it."""
    return 3 * B * _INT_BYTES + B * T * F * _FEATURE_BYTES + B * L


def pack(rows: np.ndarray, samples: dict, labelled: bool,
         out: torch.Tensor | None = None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A padded batch as ONE uint8 buffer plus its (B, T, L, F): handing a batch from a worker to
    the trainer costs a shared-memory segment per tensor, which on a 2-core machine cost more
    than reading the shard (5 tensors: 185 batches/s, one: 276). Layout: int64 [3, B] (lengths,
    label lengths, manifest rows), STORAGE_DTYPE [B, T, F] features, uint8 [B, L] labels;
    zero-padded. Written into `out` (a ring slot) when given and large enough."""
    feats = [samples[int(r)][0] for r in rows]
    labs = [samples[int(r)][1] for r in rows] if labelled else []
    B, F = len(feats), feats[0].shape[1]
    T = max(len(f) for f in feats)
    L = max(len(lab) for lab in labs) if labs else 0
    n_int, n_feat = 3 * B * _INT_BYTES, B * T * F * _FEATURE_BYTES
    n = packed_size(B, T, L, F)
    buf = out[:n] if out is not None and out.numel() >= n else _buffer(n)
    raw = buf.numpy()
    ints = raw[:n_int].view(np.int64).reshape(3, B)
    x = raw[n_int:n_int + n_feat].view(STORAGE_DTYPE).reshape(B, T, F)
    for i, f in enumerate(feats):       # samples may be read-only views of a shard's bytes
        x[i, : len(f)] = f
        x[i, len(f):] = 0
        ints[0, i] = len(f)
    if labs:
        y = raw[n_int + n_feat:].reshape(B, L)
        for i, lab in enumerate(labs):
            y[i, : len(lab)] = lab
            y[i, len(lab):] = 0
            ints[1, i] = len(lab)
    else:
        ints[1] = 0
    ints[2] = np.asarray(rows, dtype=np.int64)
    return buf, (B, T, L, F)


def unpack(buf: torch.Tensor, shape: tuple[int, int, int, int]) -> Batch:
    """The Batch views of a packed buffer (labels widened to int64 for the CTC loss)."""
    B, T, L, F = shape
    n_int, n_feat = 3 * B * _INT_BYTES, B * T * F * _FEATURE_BYTES
    ints = buf[:n_int].view(torch.int64).view(3, B)
    feats = buf[n_int:n_int + n_feat].view(_TORCH_STORAGE_DTYPE).view(B, T, F)
    labels = buf[n_int + n_feat:].view(B, L).long()
    return Batch(feats, ints[0], labels, ints[1], ints[2])


class PlannedShards(IterableDataset):
    """Yields this rank's batches of one epoch plan, starting after `start_step` steps."""

    def __init__(self, m: Manifest, plan: EpochPlan, start_step: int = 0, ring: torch.Tensor | None = None,
                 source: ShardSource | None = None):
        self.m, self.plan, self.ring, self.source = m, plan, ring, source
        self.done, self.first = plan.resume_state(start_step)

    def __iter__(self):
        info = get_worker_info()
        slot = info.id if info is not None else 0
        n = info.num_workers if info is not None else 1
        if n != self.plan.slots:
            raise RuntimeError(f"plan made for {self.plan.workers} workers, DataLoader has {n}")
        # After a resume the DataLoader restarts its round-robin at worker slot 0: rotate the
        # plan's workers so slot 0 is the one that was due next.
        w = (self.first + slot) % n
        skip, quota = self.done[w], self.plan.quotas[w]
        yielded = sent = 0
        for win in self.plan.windows[w]:
            if yielded >= quota:
                return
            k = len(win.batches)
            if skip >= k:               # whole window consumed before the resume: not read at all
                skip -= k
                yielded += k
                continue
            samples = read_shards(self.m, win.shards, self.source)
            for b in win.batches:
                if yielded >= quota:
                    return
                yielded += 1
                if skip:
                    skip -= 1
                    continue
                if self.ring is None:
                    yield pack(b, samples, self.m.labelled)      # unpacked by ShardLoader
                    continue
                k = sent % self.ring.shape[1]
                target = self.ring[slot, k]
                buf, shape = pack(b, samples, self.m.labelled, target)
                if buf.data_ptr() != target.data_ptr():     # did not fit (never, by make_ring)
                    yield buf, shape
                    continue
                sent += 1
                yield (slot, k, buf.numel()), shape
            del samples


class _Batches:
    """A DataLoader iterator that unpacks each packed batch, and whose shard errors are one line
    and stop the workers at once. close() (or dropping it) ends its workers: `workers` are their
    multiprocessing.Process objects (ShardLoader.__iter__)."""

    def __init__(self, it, ring: torch.Tensor | None = None, workers: list | None = None):
        self._it, self._ring, self._procs = it, ring, list(workers or [])

    def __iter__(self):
        return self

    def __len__(self):
        return len(self._it) if self._it is not None else 0

    def __next__(self):
        if self._it is None:
            raise StopIteration
        try:
            payload, shape = next(self._it)
        except ShardReadError as exc:
            message = error_message(exc)
            exc.__traceback__ = None    # its frames held the DataLoader iterator in a reference cycle
        else:
            if isinstance(payload, (tuple, list)):  # (worker, slot, size): copied out before the worker reuses it
                w, k, n = payload
                payload = self._ring[w, k, :n].clone()
            return unpack(payload, shape)
        self.close()                    # raised outside the handler: no worker traceback chained
        raise ShardReadError(message)

    def close(self) -> None:
        """End the workers now and let the DataLoader iterator go (its own shutdown does the
        rest): a worker blocked in a stalled fetch ignores the SIGTERM of that shutdown
        (_worker_ignores_stop_signals). The DataLoader's SIGCHLD handler would report the ended
        workers as failures: it is set aside until they are reaped. Idempotent."""
        procs, self._procs = self._procs, []
        if not procs or threading.current_thread() is not threading.main_thread():
            self._it = None             # (no signal handlers off the main thread) its shutdown first
            _kill(procs)                # unregisters the pids; then what ignored its SIGTERM
            return
        old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            _end(procs)
            self._it = None             # its shutdown finds the workers gone, unregisters their pids
        finally:
            if old is not None:
                signal.signal(signal.SIGCHLD, old)

    stop = close                        # after a stop signal (training.loop)

    def __del__(self):
        self.close()


def _end(procs: list, wait: float = 1.0) -> None:
    """Ask the workers to leave (_LEAVE), then kill those still there after `wait` seconds.
    A worker killed outright could die inside the lock of the DataLoader's done event (its
    worker loop takes it on every task), and the DataLoader's shutdown would then wait for that
    lock forever; the exception _LEAVE raises unwinds the worker's `with` blocks first."""
    for p in procs:
        if p.is_alive():
            try:
                os.kill(p.pid, _LEAVE)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait
    for p in procs:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    _kill(procs)


def _kill(procs: list) -> None:
    """SIGKILL the workers still running and reap them. A Process that multiprocessing has reaped
    reports itself dead and is never signalled, so a reused pid is never hit."""
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_LEAVE = signal.SIGUSR2             # the trainer's request to a worker: leave now (_end)


class ShardLoader(DataLoader):
    def __iter__(self):
        # Workers are forked here with the trainer's signal handlers; until their init function
        # ignores Ctrl-C/SIGTERM those would run in them. Blocked across the fork, a signal that
        # arrives meanwhile reaches the trainer when this returns, and never a worker.
        blocked = self.num_workers > 0 and threading.current_thread() is threading.main_thread()
        if self.num_workers > 0:
            release_free_memory()
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        before = set(multiprocessing.active_children())
        try:
            it = super().__iter__()     # starts this iterator's workers (persistent_workers=False)
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        workers = [p for p in multiprocessing.active_children() if p not in before]
        return _Batches(it, self.dataset.ring, workers)


def make_ring(m: Manifest, plan: EpochPlan, prefetch: int) -> torch.Tensor | None:
    """Shared-memory slots, [workers, slots, bytes], for the packed batches of this plan.

    Handing each batch over as its own shared-memory segment costs a segment, a socket
    connection to pass its file descriptor, and mapping it (about 3 ms a batch on 2 cores; the
    loader then delivered a third of what one process reads). With slots made before the workers
    start, a batch travels as (worker, slot, size) and the trainer copies it out at once
    (0.2 ms). The DataLoader dispatches a task only when it returns a batch (or a worker ends),
    so at most prefetch x workers batches are in flight between the last one returned and the
    newest one dispatched, whichever workers they belong to: with more slots than that per
    worker, no slot is rewritten before its batch has been returned and copied.

    The slots grow with the square of the workers (a checkpoint's 64 would ask for GBs): over half
    the free shared memory, None (each batch then travels as its own buffer, as with pinned memory)."""
    most = 0
    for w in range(plan.workers):
        for b in plan.worker_batches(w):
            L = int(m.label_lens[b].max()) if m.labelled else 0
            most = max(most, packed_size(len(b), int(m.frames[b].max()), L, m.feature_dim))
    shape = (plan.workers, prefetch * plan.workers + 2, max(most, 1))
    if math.prod(shape) > shared_memory_bytes() // 2:
        return None
    return torch.zeros(shape, dtype=torch.uint8).share_memory_()


def _worker_ignores_stop_signals(worker_id: int) -> None:
    """Ctrl-C and SIGTERM reach the whole process group; the trainer alone acts on them (checkpoint,
    exit 130) and then ends its workers, which would otherwise die mid-fetch with a traceback.
    The trainer ends them with _LEAVE: a quiet exit that releases what the worker holds."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(_LEAVE, _leave)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)   # blocked across the fork (ShardLoader)


def _leave(signum, frame):
    raise SystemExit(0)


def make_loader(m: Manifest, plan: EpochPlan, start_step: int = 0, *, pin_memory: bool = False,
                prefetch: int = 4, source: ShardSource | None = None) -> DataLoader:
    """The DataLoader of one epoch plan. Without pinned memory (CPU training) workers write into a
    shared ring of batch slots (make_ring); with it (CUDA) each batch is its own shared buffer,
    which the DataLoader's pinning thread copies into page-locked memory."""
    kwargs = {"prefetch_factor": prefetch, "persistent_workers": False} if plan.workers else {}
    ring = make_ring(m, plan, prefetch) if plan.workers and not pin_memory else None
    # Its own generator: making an iterator draws a base seed, which from torch's global generator
    # would shift every dropout mask after a resume (the draw lands after the restored RNG state).
    return ShardLoader(PlannedShards(m, plan, start_step, ring, source), batch_size=None, num_workers=plan.workers,
                       pin_memory=pin_memory, generator=torch.Generator(),
                       worker_init_fn=_worker_ignores_stop_signals if plan.workers else None, **kwargs)
