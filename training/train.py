"""`phonerec train`: the wiring of a run, one code path for 1..N ranks under torchrun.

Load the manifests, screen the shards, build the model, optimizer and scheduler, resume from
last.pt, then loop over the epochs; the loop's pieces (a step, an epoch, the dev evaluation,
checkpoints, the epoch record) are in training/loop.py.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from pipeline import manifest as mf
from pipeline import remote
from pipeline.atomic import ensure_writable, folder_locks, write_json
from pipeline.remote import FetchPolicy
from pipeline.reading import check_shards
from pipeline.vocab import Inventory

from . import budget as B
from . import distributed as D
from . import host, metrics, schedule, tensorboard
from .augment import AugmentConfig
from .average import WeightAverage
from .tuning import RECORD
from .checkpoint import (LAST, Checkpoint, CheckpointError, check_file, load_weights, model_config_of,
                         remove_stale_temps, restore_rng)
from .config import TrainConfig
from .data import ShardSource, damage_report, shard_label, without_shards
from .loop import (DataError, EvalResult, Run, StepHook, TrainingError, TrainState, evaluate, finish_epoch,
                   plan_for, save_checkpoint, train_one_epoch)
from .model import Model, check_fits, count_parameters, describe, device_memory, preset_config
from .plan import BatchOptions, check_budget

__all__ = ["train", "TrainingError", "DataError", "EvalResult", "evaluate", "ctc_infeasible"]


def train(cfg: TrainConfig, log=print, on_step: StepHook | None = None) -> dict:
    """Run (or resume) training; returns the last epoch's metrics, or {"stopped": True, ...} when
    a signal (Ctrl-C, SIGTERM) or `on_step` stopped it (with a checkpoint at that step).

    With cfg.skip_bad_shards every rank first checks the sha256 of every training and dev shard
    and all ranks leave out the union of the damaged ones (reported in the log, metrics.jsonl and
    the checkpoint); without it a damaged shard stops the run with a checkpoint at the current step.
    `on_step(state)` is called after every step; True asks the run to stop there."""
    if not D.main_rank():              # only rank 0 writes (other machines need not share its disk)
        return _train_ranks(cfg, log, on_step)
    # outside torchrun a missing folder is a typo; under it (--max-restarts with --resume) the
    # first launch starts the run
    if cfg.resume and not Path(cfg.weights).is_dir() and "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        raise TrainingError(f"--resume: there is no folder {cfg.weights} to resume from (a typo?); create it "
                            "to start a new run there with --resume, or drop --resume")
    ensure_writable(cfg.weights)       # before any step: not after an epoch of training
    ensure_writable(cfg.results)
    with folder_locks((cfg.weights, cfg.results), "phonerec train",
                      "wait for it to end, or give this run other --weights/--results folders"):
        return _train_ranks(cfg, log, on_step)


def _train_ranks(cfg: TrainConfig, log, on_step: StepHook | None) -> dict:
    """train() once rank 0 holds its folders: the ranks' run, then rank 0 chooses the decoding."""
    ctx = D.init(cfg.device)
    try:
        record = _train(cfg, ctx, log if ctx.is_main else (lambda *a, **k: None), on_step)
    finally:
        D.shutdown(ctx)
    if ctx.is_main and record and not record.get("stopped") and cfg.tune_decoding and cfg.dev:
        record["decoding"] = choose_decoding(cfg, log)
    return record


def choose_decoding(cfg: TrainConfig, log=print) -> dict:
    """After training, rank 0 alone (the other ranks are done): a phone LM from the training
    transcripts and its weights chosen on the dev split with best.pt, recorded in
    <weights>/decode.json (training.tuning), which the decoding commands then use; the dev figures
    with and without the LM in <results>/evaluate-<dev>.json. Returns those figures."""
    import dataclasses
    from .config import EvaluateConfig
    from .evaluation import evaluate_split

    shared = {f.name for f in dataclasses.fields(EvaluateConfig)} & {f.name for f in dataclasses.fields(TrainConfig)}
    ecfg = EvaluateConfig(**{k: getattr(cfg, k) for k in shared}, split=cfg.dev, tune=True)
    log(f"choosing the decoding on {cfg.dev}: a {cfg.lm_order}-gram phone LM from {cfg.train}, its weights on a grid")
    ev = evaluate_split(ecfg, echo=log, local=True)
    if ev is None:
        return {}
    return {f.name: str(v) if isinstance(v := getattr(ev, f.name), Path) else v
            for f in dataclasses.fields(ev) if f.name != "manifest"}


def _train(cfg: TrainConfig, ctx: D.Context, log, on_step: StepHook | None) -> dict:
    started = B.clock()
    if cfg.tensorboard:        # on every rank (rank 0 writes): all stop here together, before any collective
        tensorboard.require()
    log(host.tune(cfg.tune_host))
    if ctx.is_main:
        for p in remove_stale_temps(cfg.weights):
            log(f"removed {p}, left by an interrupted checkpoint write")
    ck = _resume_checkpoint(cfg, ctx, log)
    source = ShardSource.create(cfg.fetch_policy(), cfg.workers)
    train_m, dev_m, skipped = _load_manifests(cfg, ctx, ck, log, source.policy)
    opts = BatchOptions(max_frames=cfg.max_frames, max_utts=cfg.max_utts)
    st = _build_state(cfg, ctx, ck, log, train_m.feature_dim, train_m.inventory)
    exclude, infeasible_ids = _leave_out_infeasible(st.model, train_m, dev_m, log)
    run = Run(cfg=cfg, ctx=ctx, log=log, train_m=train_m, dev_m=dev_m, opts=opts,
              aug=AugmentConfig.from_train(cfg), steps_per_epoch=0, exclude=exclude,
              infeasible_ids=infeasible_ids, skipped=skipped, on_step=on_step, source=source)
    run.steps_per_epoch = _steps_per_epoch(run)
    run.budget = _make_budget(cfg, ck, started, log)
    st.sched = schedule.make_scheduler(cfg, st.opt, run.steps_per_epoch * run.epochs)
    st.step_sched = st.sched is not None and cfg.scheduler != "plateau"
    if ck is not None:
        _restore(st, ck, ctx, log)
    _prepare_outputs(run, st, resumed=ck is not None)
    log(f"{train_m.num_utterances} training utterances in {len(train_m.shards)} shards, {ctx.world} rank(s) x "
        f"{max(cfg.workers, 1)} stream(s); {run.steps_per_epoch} steps/epoch; batch budget {cfg.max_frames} frames")
    try:
        return _run_epochs(run, st)
    finally:
        if run.board is not None:
            run.board.close()


def _run_epochs(run: Run, st: TrainState) -> dict:
    """The epochs from the (resumed) position: train, then evaluate, record and checkpoint."""
    start_epoch, start_step = st.epoch, st.step
    record: dict = {}
    if start_epoch >= run.epochs:
        run.log(f"nothing to train: {run.weights / LAST} has finished its {start_epoch} of {run.epochs} epoch(s); "
                "give a larger --epochs to train on")
    with run.stop:
        epoch = start_epoch
        while epoch < run.epochs:        # a time budget's plan may change run.epochs in epoch 1
            t0 = B.clock()
            plan = plan_for(run, epoch)
            stopped = train_one_epoch(run, st, plan, start_step if epoch == start_epoch else 0)
            if stopped:
                return stopped
            record = finish_epoch(run, st, plan)
            epoch += 1
            if run.budget is not None and _shrink_plan(run, st, epoch, B.clock() - t0):
                return {**record, "budget_stop": True}
    return record


def _shrink_plan(run: Run, st: TrainState, epochs_done: int, epoch_s: float) -> bool:
    """After an epoch: fewer epochs if the planned ones no longer fit the budget (the schedule
    shortened to match, last.pt rewritten with the new plan). True when the run stops here.
    Collective."""
    b = run.budget
    was = b.epochs
    new, elapsed, epoch_s = b.after_epoch(run.ctx, epochs_done, epoch_s)
    if new is None:
        return False
    at = f"at {elapsed / 60:.1f} of {b.seconds / 60:g} min, the last epoch took {epoch_s / 60:.1f} min"
    if new <= epochs_done:
        run.log(f"time budget: stopping after epoch {epochs_done} of the {was} planned ({at}; checkpoint "
                f"{run.weights / LAST})")
        return True
    schedule.set_total(st.sched, run.steps_per_epoch * new)
    save_checkpoint(run, st, LAST, epochs_done, 0)
    run.log(f"time budget: {new} epochs instead of {was} ({at}); the learning-rate schedule ends with them")
    return False


def _make_budget(cfg: TrainConfig, ck: Checkpoint | None, started: float, log) -> B.Budget | None:
    """The run's time budget: the checkpoint's plan and clock on resume, else a fresh one from
    --time-budget (None without one)."""
    if ck is not None and ck.budget:
        budget = B.Budget.from_json(ck.budget)
        _check_budgeted_epochs(cfg, ck, budget, log)
    elif cfg.time_budget > 0:
        if cfg.scheduler == "onecycle":
            raise TrainingError("--time-budget stretches the schedule to the epochs that fit, which onecycle "
                                "cannot do once started; use --scheduler cosine (the default), plateau or none")
        budget = B.Budget(seconds=cfg.time_budget * 60, cap=cfg.epochs)
    else:
        return None
    budget.begin(started)
    return budget


def _check_budgeted_epochs(cfg: TrainConfig, ck: Checkpoint, budget: B.Budget, log) -> None:
    """A resumed budgeted run follows its plan, whatever --epochs says: said in one line; a larger
    --epochs after the plan is done would train nothing, so it is an error saying what to do."""
    if cfg.epochs == budget.cap:
        return
    plan = f"its --time-budget ({budget.seconds / 60:g} min) planned {budget.epochs} epoch(s)"
    if ck.epoch >= budget.epochs and cfg.epochs > ck.epoch:
        raise TrainingError(f"--epochs {cfg.epochs}: this run has finished the epochs {plan}, its learning-rate "
                            "schedule annealed there, and a budgeted run does not grow; train a new run (other "
                            "--weights and --results) with a larger --time-budget")
    log(f"resume: {plan} (at most {budget.cap}); it follows that plan, not --epochs {cfg.epochs}")


# ------------------------------------------------------------------------------------ resume

def _resume_checkpoint(cfg: TrainConfig, ctx: D.Context, log) -> Checkpoint | None:
    """With --resume, last.pt (None if there is none); the options it pins are put back into cfg."""
    if not cfg.resume:
        return None
    last = Path(cfg.weights) / LAST
    # Rank 0 reads it and sends it to the others: their machines need not share its disk. Its size
    # and its zip directory's claims are checked first, before any of it is read into memory.
    if ctx.is_main and last.is_file():
        check_file(last)
    blob = D.file_from_rank0(ctx, last)
    if blob is None:
        log(f"resume: no checkpoint at {last}, starting from scratch")
        return None
    ck = Checkpoint.from_bytes(blob, last)
    if not ck.config or ck.optimizer is None or not ck.rng:
        raise CheckpointError(f"{last} holds no training state (config, optimizer, RNG): it was not written by "
                              "`phonerec train`; train from scratch (drop --resume)")
    try:
        old = TrainConfig.from_checkpoint(ck.config)
    except ValueError as exc:
        raise CheckpointError(f"{last}: its stored config is not valid ({exc}); train from scratch (drop "
                              "--resume) or use another checkpoint") from None
    changed = old.pinned_differences(cfg)
    if changed:
        log(f"resume: keeping the checkpoint's {', '.join(changed)} (they fix the data order and model)")
        for k in changed:
            setattr(cfg, k, getattr(old, k))
    if cfg.epochs > old.epochs and ck.epoch >= old.epochs and old.scheduler == "cosine" and not cfg.time_budget:
        log(f"resume: warning: the cosine schedule of this finished run ended at epoch {old.epochs}; its "
            f"{cfg.epochs - old.epochs} new epoch(s) train at the schedule's floor (2 % of --lr)")
    if ck.world != ctx.world:
        log(f"resume: checkpoint made with {ck.world} rank(s), now {ctx.world}: "
            "the epoch plan changes from here on")
    return ck


def _restore(st: TrainState, ck: Checkpoint, ctx: D.Context, log) -> None:
    """The checkpoint's weights, optimizer, scheduler, scaler, position, accumulators and RNG."""
    load_weights(st.model, ck.model, LAST)
    if st.average is not None:          # a checkpoint without one: the average starts from its weights
        st.average.load_state_dict(ck.average or {"model": ck.model, "updates": 0})
    st.opt.load_state_dict(ck.optimizer)
    if st.sched is not None and ck.scheduler:
        st.sched.load_state_dict(ck.scheduler)
    if ck.scaler:
        st.scaler.load_state_dict(ck.scaler)
    st.epoch, st.step, st.global_step, st.best = ck.epoch, ck.step, ck.global_step, ck.best
    per_rank = ck.rank_accumulators     # this rank's partial sums of the interrupted epoch
    st.acc.update(per_rank[ctx.rank] if per_rank and len(per_rank) == ctx.world else ck.accumulators)
    if ctx.rank < len(ck.rng):
        restore_rng(ck.rng[ctx.rank])
    log(f"resumed at epoch {st.epoch + 1}, step {st.step} (global step {st.global_step})")


# -------------------------------------------------------------------------------------- data

def _load_manifests(cfg: TrainConfig, ctx: D.Context, ck: Checkpoint | None, log,
                    policy: FetchPolicy) -> tuple[mf.Manifest, mf.Manifest | None, list[dict]]:
    """The training and dev manifests (from a folder or a URL), checked, without the shards left
    out; and what was left out."""
    train_m = mf.load_many(cfg.shards, cfg.train, policy)
    if ck is not None and ck.stats.get("fingerprint") != train_m.stats.fingerprint:
        raise TrainingError(f"{Path(cfg.weights) / LAST} was trained on features normalized with other statistics "
                            f"(from {ck.stats.get('splits')}) than the shards in {cfg.shards}; train from "
                            "scratch (drop --resume) or use the shards it was trained with")
    dev_m = mf.load_many(cfg.shards, cfg.dev, policy) if cfg.dev else None
    if dev_m is not None and dev_m.num_utterances == 0:
        # Scored as a perfect 0.00 every epoch, it would keep best.pt at the first epoch's model.
        why = (f"{dev_m.inputs} inputs, all rejected: see {Path(cfg.shards) / 'rejected.tsv'}" if dev_m.inputs
               else "0 inputs")
        raise TrainingError(f"dev split {dev_m.split} has no utterances ({why}); fix it or train without one: "
                            "--dev ''")
    keep_out = {r["shard"] for r in ck.skipped_shards} if ck is not None else set()
    if keep_out:
        log(f"resume: leaving out the {len(keep_out)} shard(s) the checkpoint left out (they fix the data order)")
    screened, skipped = _screen_shards(ctx, {"train": train_m, "dev": dev_m}, cfg.skip_bad_shards, keep_out,
                                       cfg.shards, log, policy)
    if ck is not None and {r["shard"] for r in skipped} != keep_out:
        log("resume: the shards left out differ from the checkpoint's: the epoch plan changes from here on")
    train_m, dev_m = screened["train"], screened["dev"]
    if not train_m.labelled:
        raise TrainingError(f"training split {train_m.split} has no transcripts")
    opts = BatchOptions(max_frames=cfg.max_frames, max_utts=cfg.max_utts)
    check_budget(train_m, opts)
    if dev_m is not None:
        check_budget(dev_m, opts)
        if not dev_m.inventory.matches(train_m.inventory):
            raise TrainingError(f"the dev shards use the symbol inventory {dev_m.inventory.describe()}, the training "
                                f"shards {train_m.inventory.describe()}; rebuild them together")
        if dev_m.stats.fingerprint != train_m.stats.fingerprint:
            raise TrainingError("dev and train shards were normalized with different statistics; rebuild them together")
    return train_m, dev_m, skipped


def _screen_shards(ctx: D.Context, manifests: dict[str, mf.Manifest | None], skip: bool, keep_out: set[str],
                   shards_dir: str, log, policy: FetchPolicy) -> tuple[dict[str, mf.Manifest | None], list[dict]]:
    """Check the shards before planning, identically on every rank.

    Without `skip`: size and presence only (cheap; the checksum is checked as each shard is read),
    and any problem stops the run now, before any step. With `skip`: also the sha256 of every
    shard; every rank checks and the union of all ranks' findings (plus `keep_out`, the shards a
    resumed checkpoint had left out) is removed from the manifests, so all ranks plan the same
    steps. Returns the manifests and a report of what was left out."""
    found = _damaged_shards(ctx, manifests, full=skip, policy=policy)
    new = {k: v for k, v in found.items() if k not in keep_out}
    if new and not skip:
        repair = ("rebuild them where the shards were built and publish them again (`phonerec publish`)"
                  if remote.is_url(str(shards_dir)) else "delete the damaged shards and rerun `phonerec shards` to "
                  "rewrite them")
        raise TrainingError(f"{damage_report(new)}. Run `phonerec shards --verify --shards {shards_dir}`, {repair}, "
                            "or train without them with --skip-bad-shards")
    report: list[dict] = []
    out: dict[str, mf.Manifest | None] = {}
    for role, m in manifests.items():
        if m is None:
            out[role] = None
            continue
        start = m.shard_start
        drop = []
        for s in range(len(m.shards)):
            label = shard_label(m, s)
            if label in found or label in keep_out:
                drop.append(s)
                rows = range(int(start[s]), int(start[s + 1]))
                report.append({"role": role, "shard": label,
                               "reason": found.get(label, "left out by the resumed checkpoint"),
                               "utterances": len(rows), "frames": int(m.frames[list(rows)].sum()),
                               "ids": [m.ids[r] for r in rows]})
        out[role] = without_shards(m, drop)
        if drop and out[role].num_utterances == 0:
            raise TrainingError(f"all {len(m.shards)} shard(s) of {m.split} are damaged; rebuild them with "
                                "`phonerec shards`")
    for role in ("train", "dev"):
        mine = [r for r in report if r["role"] == role]
        if mine:
            n_utts = sum(r["utterances"] for r in mine)
            total = manifests[role].num_utterances
            listed = ", ".join(f"{r['shard']}: {r['reason']}" for r in mine)
            log(f"skipping {len(mine)} damaged {role} shard(s) with {n_utts} of {total} utterances ({listed}); "
                "repair them with `phonerec shards --verify` and a rebuild")
    return out, report


def _damaged_shards(ctx: D.Context, manifests: dict[str, mf.Manifest | None], full: bool,
                    policy: FetchPolicy) -> dict[str, str]:
    """'<split>/<file>' -> what is wrong, for every damaged shard found on any rank; collective."""
    found: dict[str, str] = {}
    for m in manifests.values():
        if m is None:
            continue
        for s, reason in check_shards(m, full=full, policy=policy):
            found.setdefault(shard_label(m, s), reason)
    if ctx.distributed:
        parts = [None] * ctx.world
        dist.all_gather_object(parts, found)
        for part in parts:
            for k, v in part.items():
                found.setdefault(k, v)
    return found


def ctc_infeasible(model: Model, m: mf.Manifest) -> np.ndarray:
    """Manifest rows the model cannot align: after its time downsampling fewer output frames than
    CTC needs (labels + adjacent repeats: the manifest's ctc_lens; manifests written before that
    column fall back to the label counts, a lower bound that misses the repeats)."""
    if not m.labelled or not m.num_utterances:
        return np.zeros(m.num_utterances, dtype=bool)
    need = m.ctc_lens if m.ctc_lens is not None else m.label_lens
    out = model.output_lengths(torch.from_numpy(np.asarray(m.frames, dtype=np.int64))).numpy()
    return out < need


def _infeasible_text(model: Model, m: mf.Manifest, mask: np.ndarray, what: str, verdict: str) -> str:
    """'N <what> utterance(s) too short for the model's ×2 downsampling <verdict> (e.g. <id>: 10
    frames -> 5, needs 10)'."""
    r = int(np.flatnonzero(mask)[0])
    need = int((m.ctc_lens if m.ctc_lens is not None else m.label_lens)[r])
    out = int(model.output_lengths(torch.tensor([int(m.frames[r])]))[0])
    return (f"{int(mask.sum())} {what} utterance(s) too short for the model's ×{model.downsampling} downsampling"
            f"{verdict} (e.g. {m.ids[r]}: {int(m.frames[r])} frames -> {out}, needs {need})")


def _leave_out_infeasible(model: Model, train_m: mf.Manifest, dev_m: mf.Manifest | None,
                          log) -> tuple[np.ndarray | None, list[str]]:
    """Training utterances the model's downsampling leaves too few frames for CTC: never trained
    on (their loss would be infinite, zeroed by zero_infinity: silently nothing learnt from them).
    Returns the exclusion mask (None when nothing is left out) and their ids."""
    exclude = ctc_infeasible(model, train_m)
    n_infeasible = int(exclude.sum())
    infeasible_ids = [train_m.ids[r] for r in np.flatnonzero(exclude)]
    if n_infeasible:
        if n_infeasible == train_m.num_utterances:
            raise TrainingError(_infeasible_text(model, train_m, exclude, "training", "") +
                                f": all {n_infeasible} of them; use a preset without time downsampling "
                                "(e.g. --preset model2) or --set conv_strides=[1,1]")
        log(_infeasible_text(model, train_m, exclude, "training", " left out"))
    if dev_m is not None:
        dev_short = ctc_infeasible(model, dev_m)
        if dev_short.any():
            log(_infeasible_text(model, dev_m, dev_short, "dev",
                                 ": still scored, though the model cannot emit all of their labels"))
    return (exclude if n_infeasible else None), infeasible_ids


def _steps_per_epoch(run: Run) -> int:
    """Steps every rank runs per epoch (the first epoch's plan, capped by --max-steps)."""
    cfg, ctx, train_m = run.cfg, run.ctx, run.train_m
    plan0 = plan_for(run, 0)
    steps = min(plan0.steps, cfg.max_steps) if cfg.max_steps else plan0.steps
    if steps == 0:
        raise TrainingError(f"no training steps: {train_m.num_utterances} utterances in {len(train_m.shards)} shard(s) "
                            f"for {ctx.world} rank(s); build more shards (--min-shards) or use fewer ranks")
    return steps


# ------------------------------------------------------------------------------------- model

def _build_state(cfg: TrainConfig, ctx: D.Context, ck: Checkpoint | None, log, feature_dim: int,
                 inventory: Inventory) -> TrainState:
    """Seeded model (the checkpoint's architecture on resume), its DDP wrapper, AdamW, GradScaler.
    The model's input width is the shards' (`feature_dim`) and its outputs the shards' symbol
    inventory's, whatever the preset."""
    torch.manual_seed(cfg.seed * 1000 + ctx.rank)
    np.random.seed(cfg.seed * 1000 + ctx.rank)
    random.seed(cfg.seed * 1000 + ctx.rank)
    mcfg = model_config_of(ck, Path(cfg.weights) / LAST) if ck is not None else \
        preset_config(cfg.preset, **{**cfg.model, "input_dim": feature_dim, "num_classes": inventory.num_classes})
    if mcfg.input_dim != feature_dim:
        raise TrainingError(f"{Path(cfg.weights) / LAST} was trained on {mcfg.input_dim} features per frame, the "
                            f"shards in {cfg.shards} have {feature_dim}; train from scratch (drop --resume)")
    if ck is not None and (not ck.symbol_inventory().matches(inventory) or mcfg.num_classes != inventory.num_classes):
        raise TrainingError(f"{Path(cfg.weights) / LAST} was trained with the symbol inventory "
                            f"{ck.symbol_inventory().describe()}, the shards in {cfg.shards} use "
                            f"{inventory.describe()}; train from scratch (drop --resume)")
    check_fits(mcfg, training=True, frames=cfg.max_frames, memory=device_memory(ctx.device),
               where=f"the model of {Path(cfg.weights) / LAST}" if ck is not None else f"the model ({cfg.preset})")
    model = Model(mcfg).to(ctx.device)
    log(f"model ({cfg.preset}): {describe(model)}")
    amp = cfg.amp and ctx.device.type == "cuda"
    ddp = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else model
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    average = WeightAverage(model, cfg.average) if cfg.average > 0 else None
    return TrainState(model=model, ddp=ddp, opt=opt, scaler=scaler, amp=amp, average=average)


def make_optimizer(model: Model, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, fused where torch has the kernel for the parameters' device (CPU, CUDA): one pass over
    each tensor instead of a dozen (clipping and the update took 6.6 % of the CPU demo step, 2.5 %
    fused). A resumed checkpoint's optimizer keeps the implementation it was made with (its
    param_groups say which), so old runs continue exactly."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _prepare_outputs(run: Run, st: TrainState, resumed: bool) -> None:
    """Rank 0: the output folders, metrics.jsonl cut to the checkpoint's epochs (emptied for a
    fresh run: its curves must not continue an older run's), config.json and the TensorBoard
    writer (its events cut alike)."""
    if not run.ctx.is_main:
        return
    run.weights.mkdir(parents=True, exist_ok=True)
    run.results.mkdir(parents=True, exist_ok=True)
    metrics.truncate_after(run.results, st.epoch if resumed else 0)
    stale = run.weights / RECORD
    if not resumed and stale.is_file():      # an older run's choice of the decoding: not for these weights
        stale.unlink()
        run.log(f"removed {stale}, the decoding chosen for an earlier run in this folder")
    write_json(run.weights / "config.json", {"train": run.cfg.to_dict(), "model": st.model.config.to_dict(),
                                             "parameters": count_parameters(st.model)})
    if run.cfg.tensorboard:        # the kept epochs' records are at or before the current epoch's first step
        run.board = tensorboard.open_writer(run.results, st.global_step - st.step + 1)
