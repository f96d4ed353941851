"""The training loop: one code path for 1..N ranks under torchrun.

Loss scaling: each rank sums its CTC loss; the sum of target symbols over all ranks is
all-reduced every step, and the rank's loss is scaled by world / global_symbols, so after
DDP's gradient averaging the update is the gradient of (total loss / total symbols)
whatever the batch sizes on each rank.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import Levenshtein
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pipeline import manifest as mf
from pipeline.atomic import atomic_path, write_json
from pipeline.errors import PhonerecError
from pipeline.verify import check_shards
from pipeline.vocab import VOCAB, to_codes

from . import checkpoint as ckpt
from . import distributed as D
from . import metrics
from .augment import AugmentConfig
from .config import TrainConfig
from .data import Batch, ShardReadError, damage_report, error_message, make_loader, shard_label, without_shards
from .decode import greedy_decode, restrict_to_labels
from .model import Model, ModelConfig, count_parameters, describe, preset_config
from .plan import BatchOptions, check_budget, plan_epoch


class TrainingError(PhonerecError):
    """A run that cannot continue (persistent non-finite loss, incompatible resume, ...)."""


class DataError(TrainingError):
    """A shard could not be read on some rank(s); raised on every rank together."""

    def __init__(self, messages: list[str], world: int = 1):
        self.messages = messages
        first = messages[0] if messages else "a shard could not be read"
        more = f" (and {len(messages) - 1} more problem(s) on other ranks)" if len(messages) > 1 else ""
        super().__init__(first + more)


def _gather_messages(ctx: D.Context, mine: str | None) -> list[str]:
    """Every rank's error message (None where there was none), in rank order; collective."""
    if not ctx.distributed:
        return [mine] if mine else []
    parts = [None] * ctx.world
    dist.all_gather_object(parts, mine)
    return [p for p in parts if p]


# TEST HOOK (fault injection, used only by tests/test_reliability*.py): with
# PHONEREC_TEST_KILL="RANK:GLOBAL_STEP:MARKER_FILE" in the environment, that rank SIGKILLs itself
# after finishing that global step, once (the marker file records that it happened), so tests can
# check torchrun --max-restarts + --resume. Never set it outside tests.
_TEST_KILL_ENV = "PHONEREC_TEST_KILL"


def _test_kill_hook(rank: int, global_step: int) -> None:
    spec = os.environ.get(_TEST_KILL_ENV)
    if not spec:
        return
    r, g, marker = spec.split(":", 2)
    if int(r) == rank and int(g) == global_step and not os.path.exists(marker):
        Path(marker).write_text(f"rank {rank} killed itself after global step {global_step}\n")
        os.kill(os.getpid(), signal.SIGKILL)


class _Stop:
    """SIGINT/SIGTERM ask for a checkpoint at the next step boundary; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def ctc_sum(log_probs: torch.Tensor, out_lens: torch.Tensor, batch: Batch) -> torch.Tensor:
    return F.ctc_loss(log_probs.transpose(0, 1), batch.labels, out_lens, batch.label_lengths, blank=0,
                      reduction="sum", zero_infinity=True)


def _rng_state() -> dict:
    # Plain types and tensors only (checkpoints load with weights_only=True): numpy's MT19937 key
    # array is stored as a list of ints, which restores it exactly.
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss),
                                                      float(cached)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    # A list of plain values, or numpy's own tuple (with a uint32 array) in older checkpoints.
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def make_scheduler(cfg: TrainConfig, opt, total_steps: int):
    if cfg.scheduler == "cosine":
        warm = max(1, int(cfg.warmup * total_steps))

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            p = min(1.0, (step - warm) / max(1, total_steps - warm))
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))
        return torch.optim.lr_scheduler.LambdaLR(opt, f)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=cfg.plateau_patience,
                                                          factor=cfg.plateau_factor)
    if cfg.scheduler == "none":
        return None
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}: cosine, onecycle, plateau or none")


@dataclass
class EvalResult:
    loss: float           # CTC loss per target symbol
    distance: float       # mean Levenshtein distance per utterance (greedy)
    utterances: int
    phonemes: int


@torch.no_grad()
def evaluate_greedy(model: Model, m: mf.Manifest, ctx: D.Context, cfg: TrainConfig, amp: bool) -> EvalResult:
    """Dev loss and greedy distance; each rank takes its share of shards, sums are all-reduced."""
    model.eval()
    plan = plan_epoch(m, seed=0, epoch=0, rank=ctx.rank, world=ctx.world, workers=cfg.workers,
                      opts=BatchOptions(cfg.max_frames, cfg.max_utts), shuffle=False, balance=False)
    loss = dist_sum = 0.0
    n = tokens = 0
    error = None
    try:
        for batch in make_loader(m, plan, pin_memory=ctx.device.type == "cuda"):
            batch = batch.to(ctx.device)
            with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                lp, out_lens = model(batch.feats.float(), batch.lengths)
            loss += float(ctc_sum(lp.float(), out_lens, batch))
            hyps = greedy_decode(restrict_to_labels(lp), out_lens)
            labels, llens = batch.labels.cpu(), batch.label_lengths.cpu()
            for i, h in enumerate(hyps):
                dist_sum += Levenshtein.distance(to_codes(h), to_codes(labels[i, : llens[i]].tolist()))
            n += len(hyps)
            tokens += int(llens.sum())
    except ShardReadError as exc:      # voted on below, so every rank stops together (no DDP hang)
        error = error_message(exc)
    loss, dist_sum, n, tokens, errors = D.all_sum(ctx, [loss, dist_sum, n, tokens, float(error is not None)])
    model.train()
    if errors:
        raise DataError(_gather_messages(ctx, error), ctx.world)
    return EvalResult(loss=loss / max(tokens, 1), distance=dist_sum / max(n, 1), utterances=int(n),
                      phonemes=int(tokens))


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


def train(cfg: TrainConfig, log=print, skip_bad_shards: bool = False) -> dict:
    """Run (or resume) training; returns the last epoch's metrics.

    With `skip_bad_shards` every rank first checks the sha256 of every training and dev shard and
    all ranks leave out the union of the damaged ones (reported in the log, metrics.jsonl and the
    checkpoint); without it a damaged shard stops the run with a checkpoint at the current step."""
    ctx = D.init(cfg.device)
    skip = skip_bad_shards or bool(getattr(cfg, "skip_bad_shards", False))
    try:
        return _train(cfg, ctx, log if ctx.is_main else (lambda *a, **k: None), skip)
    finally:
        D.shutdown(ctx)


def _screen_shards(ctx: D.Context, manifests: dict[str, mf.Manifest | None], skip: bool,
                   keep_out: set[str], shards_dir: str, log) -> tuple[dict[str, mf.Manifest | None], list[dict]]:
    """Check the shards before planning, identically on every rank.

    Without `skip`: size and presence only (cheap; the sha256 is checked as each shard is read),
    and any problem stops the run now, before any step. With `skip`: also the sha256 of every
    shard; every rank checks and the union of all ranks' findings (plus `keep_out`, the shards a
    resumed checkpoint had left out) is removed from the manifests, so all ranks plan the same
    steps. Returns the manifests and a report of what was left out."""
    found: dict[str, str] = {}
    for role, m in manifests.items():
        if m is None:
            continue
        for s, reason in check_shards(m, full=skip):
            found.setdefault(shard_label(m, s), reason)
    if ctx.distributed:
        parts = [None] * ctx.world
        dist.all_gather_object(parts, found)
        for part in parts:
            for k, v in part.items():
                found.setdefault(k, v)
    new = {k: v for k, v in found.items() if k not in keep_out}
    if new and not skip:
        raise TrainingError(f"{damage_report(new)}. Run `phonerec shards --verify --shards "
                            f"{shards_dir}`, delete the damaged shards and rerun `phonerec shards` to rewrite "
                            "them, or train without them with --skip-bad-shards")
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


def _train(cfg: TrainConfig, ctx: D.Context, log, skip_bad_shards: bool = False) -> dict:
    weights, results = Path(cfg.weights), Path(cfg.results)
    if ctx.is_main:
        for p in ckpt.remove_stale_temps(weights):
            log(f"removed {p}, left by an interrupted checkpoint write")
    state = None
    if cfg.resume:
        last = weights / ckpt.LAST
        if last.is_file():
            state = ckpt.load(last)
            old = TrainConfig.from_dict(state["config"])
            changed = [k for k in TrainConfig.PINNED if getattr(old, k) != getattr(cfg, k)]
            if changed:
                log(f"resume: keeping the checkpoint's {', '.join(changed)} (they fix the data order and model)")
                for k in changed:
                    setattr(cfg, k, getattr(old, k))
            if state["world"] != ctx.world:
                log(f"resume: checkpoint made with {state['world']} rank(s), now {ctx.world}: "
                    "the epoch plan changes from here on")
        else:
            log(f"resume: no checkpoint at {last}, starting from scratch")

    train_m = mf.load_many(cfg.shards, cfg.train)
    if state is not None and state.get("stats", {}).get("fingerprint") != train_m.stats.fingerprint:
        raise TrainingError(f"{weights / ckpt.LAST} was trained on features normalized with other statistics (from "
                            f"{state.get('stats', {}).get('splits')}) than the shards in {cfg.shards}; train from "
                            "scratch (drop --resume) or use the shards it was trained with")
    dev_m = mf.load_many(cfg.shards, cfg.dev) if cfg.dev else None
    if dev_m is not None and dev_m.num_utterances == 0:
        # Scored as a perfect 0.00 every epoch, it would keep best.pt at the first epoch's model.
        why = (f"{dev_m.inputs} inputs, all rejected: see {Path(cfg.shards) / 'rejected.tsv'}" if dev_m.inputs
               else "0 inputs")
        raise TrainingError(f"dev split {dev_m.split} has no utterances ({why}); fix it or train without one: "
                            "--dev ''")
    keep_out = {r["shard"] for r in state.get("skipped_shards", [])} if state else set()
    if keep_out:
        log(f"resume: leaving out the {len(keep_out)} shard(s) the checkpoint left out (they fix the data order)")
    screened, skipped = _screen_shards(ctx, {"train": train_m, "dev": dev_m}, skip_bad_shards, keep_out,
                                       cfg.shards, log)
    if state and {r["shard"] for r in skipped} != keep_out:
        log("resume: the shards left out differ from the checkpoint's: the epoch plan changes from here on")
    train_m, dev_m = screened["train"], screened["dev"]
    skipped_train = [r for r in skipped if r["role"] == "train"]
    skipped_info = {"skipped_shards": [r["shard"] for r in skipped],
                    "skipped_utterances": sum(r["utterances"] for r in skipped_train),
                    "skipped_dev_utterances": sum(r["utterances"] for r in skipped if r["role"] == "dev")}
    if not train_m.labelled:
        raise TrainingError(f"training split {train_m.split} has no transcripts")
    opts = BatchOptions(max_frames=cfg.max_frames, max_utts=cfg.max_utts)
    check_budget(train_m, opts)
    if dev_m is not None:
        check_budget(dev_m, opts)
        if dev_m.stats.fingerprint != train_m.stats.fingerprint:
            raise TrainingError("dev and train shards were normalized with different statistics; rebuild them together")

    torch.manual_seed(cfg.seed * 1000 + ctx.rank)
    np.random.seed(cfg.seed * 1000 + ctx.rank)
    random.seed(cfg.seed * 1000 + ctx.rank)
    mcfg = ModelConfig.from_dict(state["model_config"]) if state else preset_config(cfg.preset, **cfg.model)
    model = Model(mcfg).to(ctx.device)
    log(f"model ({cfg.preset}): {describe(model)}")
    amp = cfg.amp and ctx.device.type == "cuda"
    ddp = DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None) \
        if ctx.distributed else model
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    aug = AugmentConfig.from_train(cfg)

    # Utterances the model's downsampling leaves too few frames for CTC: never trained on (their
    # loss would be infinite, zeroed by zero_infinity: silently nothing learnt from them).
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
    plan0 = plan_epoch(train_m, seed=cfg.seed, epoch=0, rank=ctx.rank, world=ctx.world, workers=cfg.workers,
                       opts=opts, exclude=exclude if n_infeasible else None)
    steps_per_epoch = min(plan0.steps, cfg.max_steps) if cfg.max_steps else plan0.steps
    if steps_per_epoch == 0:
        raise TrainingError(f"no training steps: {train_m.num_utterances} utterances in {len(train_m.shards)} shard(s) "
                            f"for {ctx.world} rank(s); build more shards (--min-shards) or use fewer ranks")
    sched = make_scheduler(cfg, opt, steps_per_epoch * cfg.epochs)
    step_sched = sched is not None and cfg.scheduler != "plateau"

    start_epoch, start_step, global_step, best = 0, 0, 0, float("inf")
    acc = {"loss": 0.0, "tokens": 0.0, "real": 0.0, "padded": 0.0, "utts": 0.0, "wait": 0.0, "busy": 0.0,
           "skipped": 0.0, "seconds": 0.0}
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler"):
            sched.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        best = state.get("best", best)
        per_rank = state.get("rank_accumulators")     # this rank's partial sums of the interrupted epoch
        acc.update(per_rank[ctx.rank] if per_rank and len(per_rank) == ctx.world
                   else state.get("accumulators", {}))
        rngs = state["rng"]
        if ctx.rank < len(rngs):
            _set_rng_state(rngs[ctx.rank])
        log(f"resumed at epoch {start_epoch + 1}, step {start_step} (global step {global_step})")
        if ctx.is_main:
            metrics.truncate_after(results, start_epoch)
    if ctx.is_main:
        weights.mkdir(parents=True, exist_ok=True)
        results.mkdir(parents=True, exist_ok=True)
        if not state:                 # a fresh run: its curves must not continue an older run's
            metrics.truncate_after(results, 0)
        write_json(weights / "config.json", {"train": cfg.to_dict(), "model": mcfg.to_dict(),
                                             "parameters": count_parameters(model)})
    log(f"{train_m.num_utterances} training utterances in {len(train_m.shards)} shards, {ctx.world} rank(s) x "
        f"{max(cfg.workers, 1)} stream(s); {steps_per_epoch} steps/epoch; batch budget {cfg.max_frames} frames")

    def save(path_name: str, epoch: int, step: int) -> None:
        # Every rank's RNG state, step count (shows all ranks ran the same steps) and accumulators
        # (each rank sums over its own batches: a resumed epoch needs every rank's partial sums).
        mine = (_rng_state(), global_step, dict(acc))
        gathered = [None] * ctx.world
        if ctx.distributed:
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        rng = [g[0] for g in gathered]
        if ctx.is_main:
            ckpt.save({
                "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None, "scaler": scaler.state_dict(),
                "rng": rng, "epoch": epoch, "step": step, "global_step": global_step, "best": best,
                "accumulators": dict(acc), "config": cfg.to_dict(), "model_config": mcfg.to_dict(),
                "world": ctx.world, "vocab": list(VOCAB), "stats": train_m.stats.to_json(),
                "rank_steps": [int(g[1]) for g in gathered], "rank_accumulators": [g[2] for g in gathered],
                "skipped_shards": skipped, "ctc_infeasible": n_infeasible, "ctc_infeasible_ids": infeasible_ids,
            }, weights / path_name)

    def stop_on_data_error(exc: DataError, epoch: int, step: int, where: str) -> None:
        """Every rank gets here together: checkpoint the current step, then stop with the reason."""
        acc["seconds"] = time.perf_counter() - t_epoch
        save(ckpt.LAST, epoch, step)
        hint = ("" if skip_bad_shards else
                ", or continue without the damaged shard(s) with --resume --skip-bad-shards (the epoch plan "
                "then changes)")
        raise TrainingError(f"{exc} [{where}; checkpoint written at epoch {epoch + 1}, step {step}: after the "
                            f"repair continue with --resume{hint}]") from None

    record: dict = {}
    run_steps = 0
    bad_streak = 0
    with _Stop() as stop:
        for epoch in range(start_epoch, cfg.epochs):
            plan = plan_epoch(train_m, seed=cfg.seed, epoch=epoch, rank=ctx.rank, world=ctx.world,
                              workers=cfg.workers, opts=opts, exclude=exclude if n_infeasible else None)
            first = start_step if epoch == start_epoch else 0
            if first == 0:
                acc = dict.fromkeys(acc, 0.0)
            epoch_steps = min(plan.steps, steps_per_epoch)     # the same on every rank
            if plan.dropped_utterances:
                cut = f"; --max-steps stops it after {epoch_steps}" if cfg.max_steps and epoch_steps < plan.steps else ""
                log(f"epoch {epoch + 1}: {plan.dropped_utterances} utterances ({plan.dropped_batches} batches) "
                    f"left out this epoch so every rank runs the same {plan.steps} steps{cut}")
            t_epoch = time.perf_counter() - acc.get("seconds", 0.0)   # a resumed epoch keeps its earlier time
            bar = tqdm(total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                       disable=not (cfg.progress and ctx.is_main), leave=False, dynamic_ncols=True)
            step = first
            t_ready = time.perf_counter()
            batches = iter(make_loader(train_m, plan, first, pin_memory=ctx.device.type == "cuda")) \
                if first < epoch_steps else iter([])
            while step < epoch_steps:
                error = None
                try:
                    batch = next(batches)
                except StopIteration:          # cannot happen with a correct plan; never hang if it does
                    error = (f"the loader of rank {ctx.rank} ended after {step} of the {epoch_steps} planned "
                             f"steps of epoch {epoch + 1}")
                except ShardReadError as exc:
                    error = error_message(exc)
                # Every rank votes, so all stop together (a DDP run never hangs on one rank's bad shard).
                if (D.all_sum(ctx, [float(error is not None)])[0] if ctx.distributed else error is not None):
                    bar.close()
                    getattr(batches, "_shutdown_workers", lambda: None)()
                    stop_on_data_error(DataError(_gather_messages(ctx, error)), epoch, step,
                                       f"training data, epoch {epoch + 1}")
                t_got = time.perf_counter()
                acc["wait"] += t_got - t_ready
                batch = batch.to(ctx.device)
                x = batch.feats.float()
                if aug.active:
                    seed = np.random.SeedSequence([cfg.seed, epoch, step, ctx.rank]).generate_state(1)[0]
                    gen = torch.Generator(device=ctx.device).manual_seed(int(seed))
                    x = aug.apply(x, batch.lengths, gen)
                with torch.autocast(ctx.device.type, dtype=torch.float16, enabled=amp):
                    lp, out_lens = ddp(x, batch.lengths)
                loss_sum = ctc_sum(lp, out_lens, batch)
                finite = bool(torch.isfinite(loss_sum.detach()))
                tokens, stop_votes, bad_votes = D.all_sum(
                    ctx, [float(batch.label_lengths.sum()), float(stop.requested), float(not finite)])
                if bad_votes:
                    # Every rank skips together, so DDP's gradient all-reduce stays in step.
                    acc["skipped"] += 1
                    bad_streak += 1
                    opt.zero_grad(set_to_none=True)
                    if bad_streak >= cfg.max_bad_steps:
                        raise TrainingError(f"loss was NaN/inf for {bad_streak} consecutive steps at epoch "
                                            f"{epoch + 1} step {step}; lower --lr or check the data")
                else:
                    bad_streak = 0
                    loss = loss_sum * (ctx.world / max(tokens, 1.0))
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(opt)
                    if cfg.clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
                    scaler.step(opt)
                    scaler.update()
                    if step_sched:
                        sched.step()
                    acc["loss"] += float(loss_sum.detach())
                    acc["tokens"] += float(batch.label_lengths.sum())
                real = int(batch.lengths.sum())
                acc["real"] += real
                acc["padded"] += int(batch.lengths.max()) * len(batch.lengths)
                acc["utts"] += len(batch.lengths)
                step += 1
                global_step += 1
                run_steps += 1
                bar.update()
                bar.set_postfix(loss=f"{acc['loss'] / max(acc['tokens'], 1):.3f}")
                t_ready = time.perf_counter()
                acc["busy"] += t_ready - t_got
                _test_kill_hook(ctx.rank, global_step)
                interrupted = stop_votes > 0 or (cfg.stop_after and run_steps >= cfg.stop_after)
                if interrupted or (cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0):
                    acc["seconds"] = time.perf_counter() - t_epoch
                    save(ckpt.LAST, epoch, step)
                if interrupted:
                    bar.close()
                    log(f"stopped at epoch {epoch + 1}, step {step}: checkpoint {weights / ckpt.LAST}; "
                        "continue with --resume")
                    return {"stopped": True, "signal": stop_votes > 0, "epoch": epoch, "step": step}
            bar.close()
            getattr(batches, "_shutdown_workers", lambda: None)()
            seconds = time.perf_counter() - t_epoch
            tot = D.all_sum(ctx, [acc["loss"], acc["tokens"], acc["real"], acc["padded"], acc["utts"],
                                  acc["wait"], acc["busy"]])
            try:
                ev = evaluate_greedy(model, dev_m, ctx, cfg, amp) if dev_m is not None else None
            except DataError as exc:      # the epoch's training is kept: checkpoint at its last step
                stop_on_data_error(exc, epoch, step, f"dev data, after the training steps of epoch {epoch + 1}")
            lr = opt.param_groups[0]["lr"]
            if sched is not None and not step_sched and ev is not None:
                sched.step(ev.distance)
            record = {
                "epoch": epoch, "step": global_step, "train_loss": tot[0] / max(tot[1], 1),
                "dev_loss": ev.loss if ev else None, "dev_distance": ev.distance if ev else None,
                "dev_per": ev.distance * ev.utterances / max(ev.phonemes, 1) if ev else None,
                "padding_efficiency": tot[2] / max(tot[3], 1), "lr": lr,
                "frames_per_s": tot[2] / max(seconds, 1e-9), "utterances": int(tot[4]),
                "data_wait_fraction": tot[5] / max(tot[5] + tot[6], 1e-9),
                "dropped_utterances": plan.dropped_utterances, "skipped_steps": int(acc["skipped"]),
                "epoch_seconds": seconds, "world": ctx.world, **skipped_info, "ctc_infeasible": n_infeasible,
            }
            improved = ev is not None and ev.distance < best
            if improved:
                best = ev.distance
            save(ckpt.LAST, epoch + 1, 0)
            if ctx.is_main:
                if improved or dev_m is None:
                    with atomic_path(weights / ckpt.BEST) as tmp:
                        shutil.copyfile(weights / ckpt.LAST, tmp)
                metrics.append(results, record)
                metrics.plot(results)
            dev_txt = f"dev loss {ev.loss:.3f}, dev distance {ev.distance:.2f}" if ev else "no dev split"
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {record['train_loss']:.3f}, {dev_txt}, "
                f"padding {record['padding_efficiency']:.3f}, {record['frames_per_s']:.0f} frames/s, lr {lr:.2e}"
                f"{'  (best)' if improved else ''}")
            D.barrier(ctx)
    return record
