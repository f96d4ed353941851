"""Training to a time budget (`--time-budget MINUTES`): as many epochs as fit, with the
learning-rate schedule spanning them.

How the plan is made: the run starts with a provisional schedule over `--epochs` (the cap) and
times its steps 3 to 2 + MEASURE_STEPS (the first two warm up threads and the allocator). From
their seconds per padded frame it estimates an epoch: this epoch's padded frames, plus the dev
split's frames at DEV_COST of a training frame's cost (a forward pass and greedy decoding). The
epochs planned are those that fit in the budget left after the time spent before the current
epoch began (the setup, and any epoch shorter than the timed steps), at least one and at most
the cap; the cosine schedule is then stretched (or shrunk) to end with
the last planned step. Ranks agree on one plan (their times and frames are summed).

At every epoch's end the plan is checked against the real epoch time (dev pass included): if
the epochs left would end more than SLACK past the budget, the plan shrinks to those that fit and
the schedule with it (its remaining part compressed, so the run still ends annealed); when none
fits, the run stops there, with its checkpoint and dev figures. It never grows.

The plan is kept in every checkpoint, with the budget's clock (seconds spent so far), so a resumed
run follows it rather than measuring again: resume is bit-identical to the run that was not
interrupted, unless one of them shrinks its plan at an epoch's end where the other does not
(their clocks differ).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from . import distributed as D

WARMUP_STEPS = 2          # steps not timed: thread pools, the allocator, the first shard reads
MEASURE_STEPS = 20        # steps timed for the plan
DEV_COST = 0.5            # a dev frame's time over a training frame's (forward + greedy decoding)
SLACK = 0.05              # an epoch may end this fraction of the budget past it


def clock() -> float:
    """Seconds, monotonic; a seam for tests."""
    return time.perf_counter()


@dataclass
class Budget:
    """A run's time budget, its plan and its clock (what a checkpoint keeps, as plain numbers)."""

    seconds: float                    # the budget
    cap: int                          # --epochs: never more than this
    planned: int = 0                  # epochs planned (0: not measured yet)
    seconds_per_frame: float = 0.0    # measured: seconds per padded training frame
    spent: float = 0.0                # seconds spent by earlier sessions of this run (resume)
    measured: float = 0.0             # timed seconds so far (steps WARMUP_STEPS+1 ...)
    frames: float = 0.0               # padded frames of the timed steps
    timed: int = 0                    # steps timed so far
    epoch_seconds: float = 0.0        # the plan's estimate of one epoch (training + dev)

    def __post_init__(self) -> None:
        self._start = clock() - self.spent

    def begin(self, started: float) -> None:
        """Count from `started` (a clock() reading: when the command began), after `spent`."""
        self._start = started - self.spent

    @property
    def epochs(self) -> int:
        """The epochs to run: the plan once made, the cap until then."""
        return self.planned or self.cap

    def elapsed(self) -> float:
        return clock() - self._start

    def to_json(self) -> dict:
        return {**asdict(self), "spent": self.elapsed()}

    @classmethod
    def from_json(cls, d: dict) -> Budget:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def observe(self, global_step: int, seconds: float, padded_frames: int) -> bool:
        """Record one step's time; True when enough steps are timed to make the plan."""
        if self.planned or global_step <= WARMUP_STEPS:
            return False
        self.measured += seconds
        self.frames += padded_frames
        self.timed += 1
        return self.timed >= MEASURE_STEPS

    def plan(self, seconds: float, frames: float, epoch_frames: float, dev_frames: float, available: float,
             epochs_done: int = 0) -> int:
        """Fix the number of epochs from the timed steps (`seconds` over `frames`, summed over
        ranks), an epoch's padded frames per rank (training, dev) and the seconds `available` from
        the current epoch's start on, after `epochs_done` whole epochs (an epoch shorter than the
        timed steps is planned in a later one). Returns the epochs planned, in all."""
        self.seconds_per_frame = seconds / max(frames, 1.0)
        self.epoch_seconds = self.seconds_per_frame * (epoch_frames + DEV_COST * dev_frames)
        self.planned = epochs_done + plan_epochs(available, self.epoch_seconds, self.cap - epochs_done)
        return self.planned

    def plan_ranks(self, ctx, epoch_frames: float, dev_frames: float, in_epoch_s: float, epochs_done: int) -> int:
        """`plan` from every rank's timed steps (`ctx`: training.distributed's; times and frames
        summed over ranks, so all make the same plan): this rank's padded `epoch_frames`, the dev
        pass's frames, `in_epoch_s` seconds into the current epoch. Collective."""
        before_epoch = self.elapsed() - in_epoch_s
        seconds, frames, epoch_frames, before_epoch = D.all_sum(ctx, [self.measured, self.frames, epoch_frames,
                                                                      before_epoch])
        return self.plan(seconds, frames, epoch_frames / ctx.world, dev_frames / ctx.world,
                         self.seconds - before_epoch / ctx.world, epochs_done=epochs_done)

    def after_epoch(self, ctx, epochs_done: int, epoch_s: float) -> tuple[int | None, float, float]:
        """`replan` on the means over ranks of the clock and the last epoch's time (each rank has
        its own: one decision for all). Returns (the new plan or None, elapsed, epoch seconds).
        Collective."""
        elapsed, epoch_s = (v / ctx.world for v in D.all_sum(ctx, [self.elapsed(), epoch_s]))
        return self.replan(epochs_done, epoch_s, elapsed), elapsed, epoch_s

    def replan(self, epochs_done: int, last_epoch_s: float, elapsed: float) -> int | None:
        """At an epoch's end, `elapsed` seconds into the budget: if the planned epochs left, each
        as long as the last one, would end more than SLACK past the budget, plan only those that
        fit (the current epoch may be the last). Returns the new plan, or None when it stands."""
        if epochs_done >= self.epochs or last_epoch_s <= 0:
            return None
        left = self.seconds * (1 + SLACK) - elapsed
        fit = epochs_done + max(0, math.floor(left / last_epoch_s))
        if fit >= self.epochs:
            return None
        self.planned = fit
        return fit


def plan_epochs(available_s: float, epoch_s: float, cap: int) -> int:
    """Whole epochs of `epoch_s` seconds that fit in `available_s`: at least 1, at most `cap`."""
    fit = available_s / epoch_s if epoch_s > 0 else math.inf
    return cap if not math.isfinite(fit) or fit >= cap else max(1, math.floor(fit))


def describe(b: Budget, steps_per_epoch: int) -> str:
    """The log line of a plan."""
    return (f"time budget {b.seconds / 60:g} min: {b.timed} steps timed at "
            f"{1 / max(b.seconds_per_frame, 1e-12):,.0f} padded frames/s, an epoch estimated at "
            f"{b.epoch_seconds / 60:.1f} min -> {b.planned} epoch(s) of {steps_per_epoch} steps (at most "
            f"{b.cap}); the learning-rate schedule now ends with the last of them")
