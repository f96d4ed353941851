"""Streaming the shards of an epoch plan: one IterableDataset per rank, batches built in workers.

Workers read whole shards with webdataset (never a whole split), check every sample against
the manifest, and yield padded batches in exactly the planned order, so the DataLoader's
round-robin over workers reproduces EpochPlan.sequence().
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.manifest import Manifest
from pipeline.shardformat import decode_sample

from .plan import EpochPlan


class ShardReadError(RuntimeError):
    """A shard that does not hold what its manifest says."""


@dataclass
class Batch:
    feats: torch.Tensor          # float16 [B, T, 15], zero-padded
    lengths: torch.Tensor        # int64 [B]
    labels: torch.Tensor         # int64 [B, L], zero-padded (empty for unlabelled splits)
    label_lengths: torch.Tensor  # int64 [B]
    rows: torch.Tensor           # int64 [B]: manifest rows (ids, original index)

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in (self.feats, self.lengths, self.labels, self.label_lengths, self.rows)))

    def to(self, device, non_blocking: bool = True) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in
                       (self.feats, self.lengths, self.labels, self.label_lengths, self.rows)))

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())


def read_shards(m: Manifest, shards: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray | None]]:
    """Samples of these shards by manifest row, checked against the manifest."""
    start = m.shard_start
    paths = m.shard_paths()
    out: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    for s in shards:
        rows = range(int(start[s]), int(start[s + 1]))
        expected = {m.keys[r]: r for r in rows}
        path = paths[s]
        if not path.is_file():
            raise ShardReadError(f"missing shard {path}; run `phonerec shards --verify`, then rebuild")
        ds = wds.WebDataset(str(path), shardshuffle=False, nodesplitter=None, workersplitter=None,
                            empty_check=False)
        seen = 0
        try:
            for sample in ds:
                key, feats, labels = decode_sample(sample)
                r = expected.get(key)
                if r is None or r in out:
                    raise ShardReadError(f"{path}: unexpected or repeated sample {key!r}")
                if feats.shape[0] != m.frames[r] or (m.labelled and (labels is None or len(labels) != m.label_lens[r])):
                    raise ShardReadError(f"{path}: sample {key!r} does not match the manifest")
                out[r] = (feats, labels)
                seen += 1
        except ShardReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - tar/npy decoding errors of a damaged shard
            raise ShardReadError(f"{path}: unreadable ({type(exc).__name__}: {exc}); "
                                 "run `phonerec shards --verify`, then rebuild") from exc
        if seen != len(expected):
            raise ShardReadError(f"{path}: holds {seen} utterances, the manifest lists {len(expected)}; "
                                 "run `phonerec shards --verify`, then rebuild")
    return out


def collate(rows: np.ndarray, samples: dict, labelled: bool) -> Batch:
    feats = [samples[int(r)][0] for r in rows]
    lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
    x = torch.zeros(len(feats), int(lengths.max()), feats[0].shape[1], dtype=torch.float16)
    for i, f in enumerate(feats):
        x[i, : len(f)] = torch.from_numpy(f)
    if labelled:
        labs = [samples[int(r)][1] for r in rows]
        label_lengths = torch.tensor([len(lab) for lab in labs], dtype=torch.int64)
        y = torch.zeros(len(labs), int(label_lengths.max()), dtype=torch.int64)
        for i, lab in enumerate(labs):
            y[i, : len(lab)] = torch.from_numpy(lab.astype(np.int64))
    else:
        label_lengths = torch.zeros(len(feats), dtype=torch.int64)
        y = torch.zeros(len(feats), 0, dtype=torch.int64)
    return Batch(x, lengths, y, label_lengths, torch.as_tensor(np.asarray(rows), dtype=torch.int64))


class PlannedShards(IterableDataset):
    """Yields this rank's batches of one epoch plan, starting after `start_step` steps."""

    def __init__(self, m: Manifest, plan: EpochPlan, start_step: int = 0):
        self.m, self.plan = m, plan
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
        yielded = 0
        for win in self.plan.windows[w]:
            if yielded >= quota:
                return
            k = len(win.batches)
            if skip >= k:               # whole window consumed before the resume: not read at all
                skip -= k
                yielded += k
                continue
            samples = read_shards(self.m, win.shards)
            for b in win.batches:
                if yielded >= quota:
                    return
                yielded += 1
                if skip:
                    skip -= 1
                    continue
                yield collate(b, samples, self.m.labelled)
            del samples


def make_loader(m: Manifest, plan: EpochPlan, start_step: int = 0, *, pin_memory: bool = False,
                prefetch: int = 4) -> DataLoader:
    kwargs = {"prefetch_factor": prefetch, "persistent_workers": False} if plan.workers else {}
    return DataLoader(PlannedShards(m, plan, start_step), batch_size=None, num_workers=plan.workers,
                      pin_memory=pin_memory, **kwargs)
