"""The training loop's pieces: one step, one epoch, the dev evaluation, checkpoints, the epoch record.

`Run` holds what stays fixed during a run (config, ranks, data, the plan's exclusions, the
hooks); `TrainState` what changes (model, optimizer, scheduler, scaler, the data position and
the epoch's accumulators). training/train.py builds both and loops over the epochs:
`train_one_epoch` then `finish_epoch` (evaluate, scheduler, record, checkpoints).

Loss scaling: each rank sums its CTC loss; the sum of target symbols over all ranks is
all-reduced every step, and the rank's loss is scaled by world / global_symbols, so after
DDP's gradient averaging the update is the gradient of (total loss / total symbols)
whatever the batch sizes on each rank.

Every decision that must be the same on all ranks (skip a non-finite step, stop on a signal or a
damaged shard) is taken by a vote (an all-reduce), so a DDP run never hangs on one rank.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import Levenshtein
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from decoding import greedy_decode, restrict_to_labels
from pipeline import manifest as mf
from pipeline.atomic import atomic_path
from pipeline.errors import PhonerecError
from pipeline.reading import ShardReadError, error_message

from . import distributed as D
from . import metrics, schedule, tensorboard
from .augment import AugmentConfig
from .average import WeightAverage
from .budget import Budget, describe
from .checkpoint import BEST, LAST, Checkpoint, capture_rng
from .config import TrainConfig
from .data import Batch, ShardSource, make_loader
from .model import Model
from .plan import BatchOptions, EpochPlan, plan_epoch


class TrainingError(PhonerecError):
    """A run that cannot continue (persistent non-finite loss, incompatible resume, ...)."""


class DataError(TrainingError):
    """A shard could not be read on some rank(s); raised on every rank together."""

    def __init__(self, messages: list[str], world: int = 1):
        self.messages = messages
        first = messages[0] if messages else "a shard could not be read"
        more = f" (and {len(messages) - 1} more problem(s) on other ranks)" if len(messages) > 1 else ""
        super().__init__(first + more)


def gather_messages(ctx: D.Context, mine: str | None) -> list[str]:
    """Every rank's error message (None where there was none), in rank order; collective."""
    if not ctx.distributed:
        return [mine] if mine else []
    parts = [None] * ctx.world
    dist.all_gather_object(parts, mine)
    return [p for p in parts if p]


class StopRequested(BaseException):
    """A stop signal that arrived while the step waited for data (StopSignals.waiting). Not an
    Exception, so that no retry loop or error mapping on the way (a fetch's) can swallow it."""


class StopSignals:
    """SIGINT/SIGTERM ask for a checkpoint at the next step boundary; a second one aborts. While
    the loop waits for data (`waiting()`: a fetch from a stalled server may take minutes), the
    first one also interrupts the wait, so the run checkpoints and stops now."""

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False
        self._old = {}

    @contextlib.contextmanager
    def waiting(self):
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        if self._waiting:
            self._waiting = False
            raise StopRequested

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def ctc_sum(log_probs: torch.Tensor, out_lens: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.ctc_loss(log_probs.transpose(0, 1), batch.labels, out_lens, batch.label_lengths, blank=0,
                      reduction="sum", zero_infinity=True)


# Per-rank sums over an epoch's steps (a checkpoint keeps every rank's partial sums).
ACCUMULATORS = ("loss", "tokens", "real", "padded", "utts", "wait", "busy", "skipped", "seconds")


def _new_accumulators() -> dict[str, float]:
    return dict.fromkeys(ACCUMULATORS, 0.0)


@dataclass
class TrainState:
    """What a step changes, and what a checkpoint restores."""

    model: Model
    ddp: torch.nn.Module                  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: bool
    sched: object | None = None
    step_sched: bool = False              # the scheduler steps every step (not on dev distance)
    epoch: int = 0                        # the data position: epoch, and steps done within it
    step: int = 0
    global_step: int = 0
    best: float = math.inf                # best dev distance so far
    average: WeightAverage | None = None  # --average: the EMA of the weights (training state)
    acc: dict[str, float] = field(default_factory=_new_accumulators)
    bad_streak: int = 0                   # consecutive non-finite losses
    t_epoch: float = 0.0                  # perf_counter() at the (resumed) epoch's start


# on_step(state) -> True asks the loop to stop after this step, as Ctrl-C does: checkpoint at the
# current step and return {"stopped": True, ...}. It must answer alike on every rank.
StepHook = Callable[[TrainState], bool]


@dataclass
class Run:
    """What stays fixed while a run trains."""

    cfg: TrainConfig
    ctx: D.Context
    log: Callable[[str], None]
    train_m: mf.Manifest
    dev_m: mf.Manifest | None
    opts: BatchOptions
    aug: AugmentConfig
    steps_per_epoch: int
    exclude: np.ndarray | None = None     # manifest rows left out of every plan (CTC-infeasible)
    infeasible_ids: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)    # reports of the damaged shards left out
    on_step: StepHook | None = None
    stop: StopSignals = field(default_factory=StopSignals)
    source: ShardSource = field(default_factory=ShardSource)    # how shards are read (local or URL)
    budget: Budget | None = None          # --time-budget: its plan and clock
    board: object | None = None           # --tensorboard: rank 0's SummaryWriter (training/tensorboard.py)

    @property
    def epochs(self) -> int:
        """Epochs this run trains: --epochs, or what the time budget planned."""
        return self.budget.epochs if self.budget is not None else self.cfg.epochs

    @property
    def weights(self) -> Path:
        return Path(self.cfg.weights)

    @property
    def results(self) -> Path:
        return Path(self.cfg.results)

    @property
    def skipped_info(self) -> dict:
        """What every metrics record says about the shards left out."""
        return {"skipped_shards": [r["shard"] for r in self.skipped],
                "skipped_utterances": sum(r["utterances"] for r in self.skipped if r["role"] == "train"),
                "skipped_dev_utterances": sum(r["utterances"] for r in self.skipped if r["role"] == "dev")}


def plan_for(run: Run, epoch: int) -> EpochPlan:
    """This rank's part of the epoch's plan (the same steps on every rank)."""
    ctx, cfg = run.ctx, run.cfg
    return plan_epoch(run.train_m, seed=cfg.seed, epoch=epoch, rank=ctx.rank, world=ctx.world,
                      workers=cfg.workers, opts=run.opts, exclude=run.exclude)


# ------------------------------------------------------------------------------- checkpoints

def save_checkpoint(run: Run, st: TrainState, name: str, epoch: int, step: int) -> Checkpoint | None:
    """Write weights/<name> at this data position; collective (every rank takes part). Returns
    what rank 0 wrote (None on the others)."""
    ctx = run.ctx
    # Every rank's RNG state, step count (shows all ranks ran the same steps) and accumulators
    # (each rank sums over its own batches: a resumed epoch needs every rank's partial sums).
    mine = (capture_rng(), st.global_step, dict(st.acc))
    gathered = [None] * ctx.world
    if ctx.distributed:
        dist.all_gather_object(gathered, mine)
    else:
        gathered = [mine]
    if not ctx.is_main:
        return None
    ck = Checkpoint(
        model=st.model.state_dict(), optimizer=st.opt.state_dict(),
        scheduler=st.sched.state_dict() if st.sched is not None else None, scaler=st.scaler.state_dict(),
        rng=[g[0] for g in gathered], epoch=epoch, step=step, global_step=st.global_step, best=st.best,
        accumulators=dict(st.acc), config=run.cfg.to_dict(), model_config=st.model.config.to_dict(),
        world=ctx.world, **run.train_m.inventory.to_json(), stats=run.train_m.stats.to_json(),
        rank_steps=[int(g[1]) for g in gathered], rank_accumulators=[g[2] for g in gathered],
        skipped_shards=run.skipped, ctc_infeasible=len(run.infeasible_ids),
        ctc_infeasible_ids=run.infeasible_ids, budget=run.budget.to_json() if run.budget is not None else {},
        average=st.average.state_dict() if st.average is not None else {},
    )
    ck.save(run.weights / name)
    return ck


def stop_on_data_error(run: Run, st: TrainState, exc: DataError, where: str) -> NoReturn:
    """Every rank gets here together: checkpoint the current step, then stop with the reason."""
    st.acc["seconds"] = time.perf_counter() - st.t_epoch
    save_checkpoint(run, st, LAST, st.epoch, st.step)
    hint = ("" if run.cfg.skip_bad_shards else
            ", or continue without the damaged shard(s) with --resume --skip-bad-shards (the epoch plan "
            "then changes)")
    raise TrainingError(f"{exc} [{where}; checkpoint written at epoch {st.epoch + 1}, step {st.step}: after the "
                        f"repair continue with --resume{hint}]") from None


# ------------------------------------------------------------------------------------ a step

def next_batch(run: Run, st: TrainState, batches, epoch_steps: int, bar) -> Batch | None:
    """The next planned batch, or None when a stop signal interrupted the wait for it (on any
    rank: a vote); a rank that cannot read it stops every rank (a vote)."""
    ctx = run.ctx
    error, batch = None, None
    try:
        with run.stop.waiting():
            batch = next(batches)
    except StopRequested:
        pass
    except StopIteration:          # cannot happen with a correct plan; never hang if it does
        error = (f"the loader of rank {ctx.rank} ended after {st.step} of the {epoch_steps} planned "
                 f"steps of epoch {st.epoch + 1}")
    except ShardReadError as exc:
        error = error_message(exc)
    # Every rank votes, so all stop together (a DDP run never hangs on one rank's bad shard).
    errors, stops = D.all_sum(ctx, [float(error is not None), float(run.stop.requested)]) if ctx.distributed else \
        (float(error is not None), float(run.stop.requested))
    if errors:
        bar.close()
        getattr(batches, "close", lambda: None)()
        stop_on_data_error(run, st, DataError(gather_messages(ctx, error)), f"training data, epoch {st.epoch + 1}")
    return None if stops and (batch is None or ctx.distributed) else batch


def train_step(run: Run, st: TrainState, batch: Batch) -> float:
    """Forward, loss, backward and update on one batch (skipped on every rank if any rank's loss
    is not finite); returns the number of ranks asked to stop (by a signal)."""
    ctx, cfg = run.ctx, run.cfg
    batch = batch.to(ctx.device)
    x, lengths = batch.feats.float(), batch.lengths
    if run.aug.active:
        seed = np.random.SeedSequence([cfg.seed, st.epoch, st.step, ctx.rank]).generate_state(1)[0]
        gen = torch.Generator(device=ctx.device).manual_seed(int(seed))
        x, lengths = run.aug.resample(x, lengths, gen)
        x = run.aug.apply(x, lengths, gen)
    with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=st.amp):
        lp, out_lens = st.ddp(x, lengths)
    loss_sum = ctc_sum(lp, out_lens, batch)
    finite = bool(torch.isfinite(loss_sum.detach()))
    tokens, stop_votes, bad_votes = D.all_sum(
        ctx, [float(batch.label_lengths.sum()), float(run.stop.requested), float(not finite)])
    if bad_votes:
        _skip_step(run, st)
    else:
        _update(run, st, loss_sum, tokens)
        st.acc["loss"] += float(loss_sum.detach())
        st.acc["tokens"] += float(batch.label_lengths.sum())
        if run.board is not None:
            tensorboard.write_step(run.board, st.global_step + 1,    # rank 0's own batch
                                   float(loss_sum.detach()) / max(float(batch.label_lengths.sum()), 1.0),
                                   st.opt.param_groups[0]["lr"])
    st.acc["real"] += int(batch.lengths.sum())
    st.acc["padded"] += int(batch.lengths.max()) * len(batch.lengths)
    st.acc["utts"] += len(batch.lengths)
    return stop_votes


def _skip_step(run: Run, st: TrainState) -> None:
    # Every rank skips together, so DDP's gradient all-reduce stays in step.
    st.acc["skipped"] += 1
    st.bad_streak += 1
    st.opt.zero_grad(set_to_none=True)
    if st.bad_streak >= run.cfg.max_bad_steps:
        raise TrainingError(f"loss was NaN/inf for {st.bad_streak} consecutive steps at epoch "
                            f"{st.epoch + 1} step {st.step}; lower --lr or check the data")


def _update(run: Run, st: TrainState, loss_sum: torch.Tensor, tokens: float) -> None:
    st.bad_streak = 0
    loss = loss_sum * (run.ctx.world / max(tokens, 1.0))
    st.opt.zero_grad(set_to_none=True)
    st.scaler.scale(loss).backward()
    st.scaler.unscale_(st.opt)
    if run.cfg.clip > 0:
        torch.nn.utils.clip_grad_norm_(st.model.parameters(), run.cfg.clip)
    st.scaler.step(st.opt)
    st.scaler.update()
    if st.average is not None:
        st.average.update(st.model)
    if st.step_sched:
        st.sched.step()


def after_step(run: Run, st: TrainState, stop_votes: float) -> bool:
    """Checkpoint if it is time to (or a stop was asked for); True when the run stops here."""
    interrupted = stop_votes > 0 or (run.on_step is not None and bool(run.on_step(st)))
    if interrupted or (run.cfg.checkpoint_every and st.global_step % run.cfg.checkpoint_every == 0):
        st.acc["seconds"] = time.perf_counter() - st.t_epoch
        save_checkpoint(run, st, LAST, st.epoch, st.step)
    return interrupted


# ---------------------------------------------------------------------------------- an epoch

def train_one_epoch(run: Run, st: TrainState, plan: EpochPlan, first: int) -> dict | None:
    """The epoch's training steps from step `first` (a resumed epoch's position). Returns None
    when they are done, or {"stopped": True, ...} when the run was asked to stop."""
    cfg, ctx = run.cfg, run.ctx
    st.epoch, st.step = plan.epoch, first
    if first == 0:
        st.acc = dict.fromkeys(st.acc, 0.0)
    epoch_steps = min(plan.steps, run.steps_per_epoch)     # the same on every rank
    if plan.dropped_utterances:
        cut = f"; --max-steps stops it after {epoch_steps}" if cfg.max_steps and epoch_steps < plan.steps else ""
        run.log(f"epoch {st.epoch + 1}: {plan.dropped_utterances} utterances ({plan.dropped_batches} batches) "
                f"left out this epoch so every rank runs the same {plan.steps} steps{cut}")
    st.t_epoch = time.perf_counter() - st.acc.get("seconds", 0.0)   # a resumed epoch keeps its earlier time
    bar = tqdm(total=run.steps_per_epoch, initial=first, desc=f"epoch {st.epoch + 1}/{run.epochs}", unit="step",
               disable=not (cfg.progress and ctx.is_main), leave=False, dynamic_ncols=True)
    t_ready = time.perf_counter()
    batches = iter(make_loader(run.train_m, plan, first, pin_memory=ctx.device.type == "cuda", source=run.source)) \
        if first < epoch_steps else iter([])
    while st.step < epoch_steps:
        batch = next_batch(run, st, batches, epoch_steps, bar)
        if batch is None:               # a stop signal while waiting for data: checkpoint this step
            getattr(batches, "stop", lambda: None)()
            after_step(run, st, 1.0)
            bar.close()
            run.log(f"stopped at epoch {st.epoch + 1}, step {st.step} while waiting for data: checkpoint "
                    f"{run.weights / LAST}; continue with --resume")
            return {"stopped": True, "signal": True, "epoch": st.epoch, "step": st.step}
        t_got = time.perf_counter()
        st.acc["wait"] += t_got - t_ready
        padded = st.acc["padded"]
        stop_votes = train_step(run, st, batch)
        st.step += 1
        st.global_step += 1
        bar.update()
        bar.set_postfix(loss=f"{st.acc['loss'] / max(st.acc['tokens'], 1):.3f}")
        t_prev, t_ready = t_ready, time.perf_counter()
        st.acc["busy"] += t_ready - t_got
        if run.budget is not None and run.budget.observe(st.global_step, t_ready - t_prev, st.acc["padded"] - padded):
            plan_budget(run, st, plan)
            bar.set_description(f"epoch {st.epoch + 1}/{run.epochs}")
        if after_step(run, st, stop_votes):
            bar.close()
            run.log(f"stopped at epoch {st.epoch + 1}, step {st.step}: checkpoint {run.weights / LAST}; "
                    "continue with --resume")
            return {"stopped": True, "signal": stop_votes > 0, "epoch": st.epoch, "step": st.step}
    bar.close()
    getattr(batches, "close", lambda: None)()        # not iter([]) of an epoch already done
    return None


def plan_budget(run: Run, st: TrainState, plan: EpochPlan) -> None:
    """The time budget's plan, from the steps timed so far (training/budget.py), and the schedule
    made to end with it. Collective."""
    passes = 2 if st.average is not None else 1          # the dev pass scores the averaged weights too
    dev = passes * float(run.dev_m.frames.sum()) if run.dev_m is not None else 0.0
    epochs = run.budget.plan_ranks(run.ctx, padded_frames(plan, run.steps_per_epoch), dev,
                                   time.perf_counter() - st.t_epoch, st.epoch)
    schedule.set_total(st.sched, run.steps_per_epoch * epochs)
    run.log(describe(run.budget, run.steps_per_epoch))


def padded_frames(plan: EpochPlan, steps: int) -> float:
    """Frames (padding included) of this rank's first `steps` batches of the plan."""
    return float(sum(len(b) * int(plan.frames[b].max()) for b in plan.sequence()[:steps]))


def finish_epoch(run: Run, st: TrainState, plan: EpochPlan) -> dict:
    """After the epoch's steps: dev evaluation, plateau scheduler, metrics record, last.pt (and
    best.pt), the log line. Returns the record."""
    ctx = run.ctx
    seconds = time.perf_counter() - st.t_epoch
    acc = st.acc
    tot = D.all_sum(ctx, [acc["loss"], acc["tokens"], acc["real"], acc["padded"], acc["utts"],
                          acc["wait"], acc["busy"]])
    ev, avg = dev_pass(run, st)
    lr = st.opt.param_groups[0]["lr"]
    if st.sched is not None and not st.step_sched and ev is not None:
        st.sched.step(ev.distance)
    record = epoch_record(run, st, plan, tot, ev, lr, seconds, avg)
    net = network_record(run)
    if net is not None:
        record["network"] = net
    use_avg = avg is not None and avg.distance < ev.distance
    score = (avg if use_avg else ev).distance if ev is not None else math.inf
    improved = ev is not None and score < st.best
    if improved:
        st.best = score
    ck = save_checkpoint(run, st, LAST, st.epoch + 1, 0)
    if ctx.is_main:
        best = None
        if improved or run.dev_m is None:
            best = best_checkpoint(ck, st, use_avg)
        publish_epoch(run, record, best)
    run.log(epoch_line(run, st, record, ev, avg, lr, improved, time.perf_counter() - st.t_epoch))
    if net is not None:
        run.log(network_line(net))
    D.barrier(ctx)
    return record


def dev_pass(run: Run, st: TrainState) -> tuple[EvalResult | None, EvalResult | None]:
    """The dev figures of the trained weights and of their average (None without a dev split or
    an average). Collective."""
    if run.dev_m is None:
        return None, None
    try:
        models = [st.model] + ([st.average.model] if st.average is not None else [])
        ev, *avg = evaluate(models, run.dev_m, run.ctx, run.cfg, st.amp, run.source)
        avg = avg[0] if avg else None
    except DataError as exc:      # the epoch's training is kept: checkpoint at its last step
        stop_on_data_error(run, st, exc, f"dev data, after the training steps of epoch {st.epoch + 1}")
    return ev, avg


def best_checkpoint(ck: Checkpoint, st: TrainState, averaged: bool) -> Checkpoint:
    """best.pt: last.pt's state with the weights that decoded best on dev (the averaged ones
    when they did, which the checkpoint says)."""
    if not averaged:
        return ck
    import dataclasses
    return dataclasses.replace(ck, model=st.average.model.state_dict(), averaged=True)


def epoch_line(run: Run, st: TrainState, record: dict, ev: EvalResult | None, avg: EvalResult | None, lr: float,
               improved: bool, seconds: float) -> str:
    """The log's line of the epoch: where the run is (epoch, time, what is left), its figures."""
    dev_txt = "no dev split"
    if ev is not None:
        dev_txt = f"dev loss {ev.loss:.3f}, dev distance {ev.distance:.2f} (PER {100 * record['dev_per']:.2f}%)"
    if avg is not None:
        dev_txt += f", averaged weights {avg.distance:.2f} (PER {100 * record['dev_per_averaged']:.2f}%)"
    left = run.epochs - (st.epoch + 1)
    eta = f", about {left * seconds / 60:.0f} min left" if left > 0 else ""
    return (f"epoch {st.epoch + 1}/{run.epochs} in {seconds / 60:.1f} min{eta}: train loss "
            f"{record['train_loss']:.3f}, {dev_txt}, padding {record['padding_efficiency']:.3f}, "
            f"{record['frames_per_s']:.0f} frames/s, lr {lr:.2e}{'  (best)' if improved else ''}")


def epoch_record(run: Run, st: TrainState, plan: EpochPlan, tot: list[float], ev: EvalResult | None,
                 lr: float, seconds: float, avg: EvalResult | None = None) -> dict:
    """The epoch's line of metrics.jsonl; `tot` are the accumulators summed over ranks (loss,
    tokens, real, padded, utts, wait, busy); `avg` the averaged weights' dev figures."""
    return {
        "epoch": st.epoch + 1, "step": st.global_step, "train_loss": tot[0] / max(tot[1], 1),    # from 1, as logged
        "dev_loss": ev.loss if ev else None, "dev_distance": ev.distance if ev else None,
        "dev_per": ev.distance * ev.utterances / max(ev.phonemes, 1) if ev else None,
        "padding_efficiency": tot[2] / max(tot[3], 1), "lr": lr,
        "frames_per_s": tot[2] / max(seconds, 1e-9), "utterances": int(tot[4]),
        "data_wait_fraction": tot[5] / max(tot[5] + tot[6], 1e-9),
        "dropped_utterances": plan.dropped_utterances, "skipped_steps": int(st.acc["skipped"]),
        "epoch_seconds": seconds, "world": run.ctx.world, **run.skipped_info,
        "ctc_infeasible": len(run.infeasible_ids), "planned_epochs": run.epochs,
        "dev_distance_averaged": avg.distance if avg else None,
        "dev_per_averaged": avg.distance * avg.utterances / max(avg.phonemes, 1) if avg else None,
    }


def network_record(run: Run) -> dict | None:
    """Shards at a URL: what every rank's reads did since this process started (pipeline/remote.py's
    COUNTERS, summed over ranks); None for local shards. Collective."""
    if not (run.train_m.remote or (run.dev_m is not None and run.dev_m.remote)):
        return None
    mine = run.source.totals()
    return dict(zip(mine, (int(v) for v in D.all_sum(run.ctx, [float(v) for v in mine.values()]))))


def network_line(net: dict) -> str:
    return (f"shards over the network: {net['fetched']} fetched ({net['bytes'] / 1e6:.1f} MB), "
            f"{net['retries']} retried, {net['refetched']} fetched again after a bad checksum, "
            f"{net['cache_hits']} from the cache")


def publish_epoch(run: Run, record: dict, best: Checkpoint | None) -> None:
    """Rank 0, after last.pt of the epoch's end: best.pt (when `best`), metrics.jsonl,
    curves.png (and the TensorBoard events)."""
    if best is not None and not best.averaged:
        with atomic_path(run.weights / BEST) as tmp:
            shutil.copyfile(run.weights / LAST, tmp)
    elif best is not None:
        best.save(run.weights / BEST)
    metrics.append(run.results, record)
    metrics.plot(run.results)
    if run.board is not None:
        tensorboard.write(run.board, record)


# ------------------------------------------------------------------------------- evaluation

@dataclass
class EvalResult:
    loss: float           # CTC loss per target symbol
    distance: float       # mean Levenshtein distance per utterance (greedy)
    utterances: int
    phonemes: int


@torch.no_grad()
def evaluate(models: list[Model], m: mf.Manifest, ctx: D.Context, cfg: TrainConfig, amp: bool,
             source: ShardSource | None = None) -> list[EvalResult]:
    """Dev loss and greedy distance of each model (the trained weights and their average), in one
    pass over the shards (each is read once); each rank takes its share, sums are all-reduced."""
    for model in models:
        model.eval()
    plan = plan_epoch(m, seed=0, epoch=0, rank=ctx.rank, world=ctx.world, workers=cfg.workers,
                      opts=BatchOptions(cfg.max_frames, cfg.max_utts), shuffle=False, balance=False)
    sums = [[0.0, 0.0] for _ in models]         # loss, distance
    n = tokens = 0
    error = None
    inv = m.inventory
    try:
        for batch in make_loader(m, plan, pin_memory=ctx.device.type == "cuda", source=source):
            batch = batch.to(ctx.device)
            labels, llens = batch.labels.cpu(), batch.label_lengths.cpu()
            refs = [inv.to_codes(labels[i, : llens[i]].tolist()) for i in range(len(llens))]
            for model, acc in zip(models, sums):
                with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                    lp, out_lens = model(batch.feats.float(), batch.lengths)
                acc[0] += float(ctc_sum(lp.float(), out_lens, batch))
                hyps = greedy_decode(restrict_to_labels(lp, inv), out_lens)
                acc[1] += sum(Levenshtein.distance(inv.to_codes(h), ref) for h, ref in zip(hyps, refs))
            n += len(refs)
            tokens += int(llens.sum())
    except ShardReadError as exc:      # voted on below, so every rank stops together (no DDP hang)
        error = error_message(exc)
    *flat, n, tokens, errors = D.all_sum(ctx, [v for acc in sums for v in acc] + [n, tokens, float(error is not None)])
    for model in models:
        model.train()
    if errors:
        raise DataError(gather_messages(ctx, error), ctx.world)
    return [EvalResult(loss=flat[2 * k] / max(tokens, 1), distance=flat[2 * k + 1] / max(n, 1), utterances=int(n),
                       phonemes=int(tokens)) for k in range(len(models))]
