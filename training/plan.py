"""Each epoch's batches, planned from the manifest alone as a pure function of (seed, epoch).

Every rank computes the same global plan and takes its part, so all ranks know up front how
many steps they run (the same number), which utterances that leaves out, and where step k
is: resuming needs no replay.

Per shard (a narrow length range): a seeded shuffle, then a noisy length sort (length x
(1 +/- noise)), then greedy batches under the frame budget ``B x longest <= max_frames`` and
``B <= max_utts``. Shards are shuffled per epoch and dealt to ranks, then to DataLoader
workers, balancing batch counts. Each worker reads its shards in windows of ``mix`` shards
and yields the window's batches in a seeded random order, so consecutive batches come from
different length buckets while only ``mix`` shards are ever held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.errors import PhonerecError
from pipeline.manifest import Manifest


# The default frame budget of a batch, (utterances) x (longest utterance): training and decoding.
DEFAULT_MAX_FRAMES = 48000


class PlanError(PhonerecError, ValueError):
    """The frame budget cannot hold some utterance, or similar planning problems."""


@dataclass(frozen=True)
class BatchOptions:
    max_frames: int = DEFAULT_MAX_FRAMES   # budget for (utterances in batch) x (longest utterance in batch)
    max_utts: int = 64
    noise: float = 0.05          # relative length noise of the within-shard sort
    mix: int = 2                 # shards whose batches are interleaved by one worker


@dataclass
class Window:
    shards: list[int]                 # shard numbers read together
    batches: list[np.ndarray]         # manifest rows of each batch, in yield order


@dataclass
class EpochPlan:
    epoch: int
    rank: int
    world: int
    workers: int                           # DataLoader num_workers (0 = in the main process)
    steps: int                             # batches every rank runs this epoch
    windows: list[list[Window]]            # per worker
    quotas: list[int]                      # batches each worker yields (sum = steps)
    frames: np.ndarray                     # manifest frames, for padding figures
    dropped_utterances: int = 0            # over all ranks: left out to equalise steps
    dropped_batches: int = 0
    rank_batches: list[int] = field(default_factory=list)

    @property
    def slots(self) -> int:
        """Batch streams: one per DataLoader worker, or one in the main process."""
        return max(self.workers, 1)

    def worker_batches(self, worker: int) -> list[np.ndarray]:
        return [b for w in self.windows[worker] for b in w.batches][: self.quotas[worker]]

    def sequence(self) -> list[np.ndarray]:
        """The batches in the order this rank's DataLoader yields them (round-robin over workers)."""
        per = [self.worker_batches(w) for w in range(self.slots)]
        return [per[w][i] for w, i in _round_robin([len(p) for p in per])]

    def padding(self) -> tuple[int, int]:
        """(real frames, padded frames) of this rank's batches."""
        real = padded = 0
        for b in self.sequence():
            f = self.frames[b]
            real += int(f.sum())
            padded += int(f.max()) * len(f)
        return real, padded

    def resume_state(self, step: int) -> tuple[list[int], int]:
        """Batches each worker already yielded after `step` steps, and the worker that yields next."""
        done = [0] * self.slots
        last = -1
        for k, (w, _) in enumerate(_round_robin(self.quotas)):
            if k == step:
                break
            done[w] += 1
            last = w
        return done, (last + 1) % self.slots


def _round_robin(counts: list[int]):
    """(worker, item) pairs in the order a DataLoader interleaves its workers' outputs."""
    pos = [0] * len(counts)
    while True:
        moved = False
        for w, c in enumerate(counts):
            if pos[w] < c:
                yield w, pos[w]
                pos[w] += 1
                moved = True
        if not moved:
            return


def shard_batches(m: Manifest, shard: int, opts: BatchOptions, rng: np.random.Generator,
                  exclude: np.ndarray | None = None) -> list[np.ndarray]:
    """The shard's batches; rows marked in `exclude` (bool over manifest rows) are left out after
    the shuffle and sort, so the random draws (and every other row's order) are what they are
    without exclusions."""
    start = m.shard_start
    rows = np.arange(start[shard], start[shard + 1])
    rows = rows[rng.permutation(len(rows))]
    f = m.frames[rows].astype(np.float64)
    rows = rows[np.argsort(f * (1.0 + opts.noise * rng.uniform(-1, 1, len(f))), kind="stable")]
    if exclude is not None:
        rows = rows[~exclude[rows]]
    batches, cur, longest = [], [], 0
    for r in rows:
        n = int(m.frames[r])
        new_longest = max(longest, n)
        if cur and ((len(cur) + 1) * new_longest > opts.max_frames or len(cur) + 1 > opts.max_utts):
            batches.append(np.asarray(cur, dtype=np.int64))
            cur, new_longest = [], n
        cur.append(int(r))
        longest = new_longest
    if cur:
        batches.append(np.asarray(cur, dtype=np.int64))
    return batches


def _deal(weights: list[int], bins: int) -> list[list[int]]:
    """Deal items (in the given order) to the bin with the least weight so far."""
    out: list[list[int]] = [[] for _ in range(bins)]
    load = [0] * bins
    for i, w in enumerate(weights):
        b = min(range(bins), key=lambda k: (load[k], k))
        out[b].append(i)
        load[b] += w
    return out


def check_budget(m: Manifest, opts: BatchOptions) -> None:
    if m.num_utterances and int(m.frames.max()) > opts.max_frames:
        raise PlanError(f"split {m.split}: the longest utterance has {int(m.frames.max())} frames, more than "
                        f"--max-frames {opts.max_frames}; raise --max-frames to at least that")


def plan_epoch(m: Manifest, *, seed: int, epoch: int, rank: int = 0, world: int = 1, workers: int = 0,
               opts: BatchOptions = BatchOptions(), shuffle: bool = True, balance: bool = True,
               exclude: np.ndarray | None = None) -> EpochPlan:
    """This rank's part of the epoch. With balance=False (evaluation) nothing is dropped.

    `exclude`: bool [N] over the manifest's rows to leave out of every batch (e.g. utterances the
    model cannot align); None or all False gives exactly the plan without it."""
    check_budget(m, opts)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != (m.num_utterances,):
            raise PlanError(f"exclusion mask of {exclude.shape} for {m.num_utterances} utterances")
    n_workers = max(workers, 1)
    ns = len(m.shards)
    shard_order = np.random.default_rng([seed, epoch, 0]).permutation(ns) if shuffle else np.arange(ns)
    per_shard = {}
    for s in range(ns):
        rng = np.random.default_rng([seed, epoch, 1, s]) if shuffle else None
        if rng is None:     # evaluation: plain length order, no randomness
            per_shard[s] = shard_batches(m, s, BatchOptions(opts.max_frames, opts.max_utts, 0.0, opts.mix),
                                         np.random.default_rng(0), exclude)
        else:
            per_shard[s] = shard_batches(m, s, opts, rng, exclude)
    counts = [len(per_shard[s]) for s in shard_order]
    rank_sets = _deal(counts, world)
    rank_batches = [sum(counts[i] for i in rs) for rs in rank_sets]
    mine = [int(shard_order[i]) for i in rank_sets[rank]]
    worker_sets = _deal([len(per_shard[s]) for s in mine], n_workers)

    windows: list[list[Window]] = []
    for w, ws in enumerate(worker_sets):
        shards = [mine[i] for i in ws]
        wins = []
        mix = max(opts.mix, 1)
        for k in range(0, len(shards), mix):
            group = shards[k:k + mix]
            batches = [b for s in group for b in per_shard[s]]
            if shuffle:
                rng = np.random.default_rng([seed, epoch, 2, group[0]])
                batches = [batches[i] for i in rng.permutation(len(batches))]
            wins.append(Window(shards=group, batches=batches))
        windows.append(wins)

    available = [sum(len(x.batches) for x in wins) for wins in windows]
    steps = min(rank_batches) if balance else rank_batches[rank]
    quotas = [0] * n_workers
    for k, (w, _) in enumerate(_round_robin(available)):
        if k == steps:
            break
        quotas[w] += 1
    dropped_batches = sum(rank_batches) - steps * world if balance else 0
    dropped_utts = 0
    if balance and dropped_batches:
        # Recompute what every rank leaves out (cheap, manifest only) so the report is global.
        for r in range(world):
            if rank_batches[r] == steps:
                continue
            p = plan_epoch(m, seed=seed, epoch=epoch, rank=r, world=world, workers=workers, opts=opts,
                           shuffle=shuffle, balance=False, exclude=exclude)
            seq_all = p.sequence()
            dropped_utts += sum(len(b) for b in seq_all[steps:])
    return EpochPlan(epoch=epoch, rank=rank, world=world, workers=workers, steps=steps, windows=windows,
                     quotas=quotas, frames=m.frames, dropped_utterances=dropped_utts,
                     dropped_batches=dropped_batches, rank_batches=rank_batches)
