"""The sweep: an Optuna study (seeded TPE, a pruner on each epoch's dev PER) whose trials are
`phonerec train` runs (sweep/trial.py), one worker per device, until --trials or --minutes.

Where things go (RESULTS and WEIGHTS are the training options' folders):
RESULTS/sweep.db (the default storage), RESULTS/<study>/trials.{tsv,json}, best.yaml and the
plots (sweep/report.py), RESULTS/<study>/trial-NNNN/ (its recipe.yaml, train.log, metrics.jsonl,
curves.png), WEIGHTS/<study>/trial-NNNN/ (its last.pt and best.pt).
"""

from __future__ import annotations

import dataclasses
import re
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.atomic import ensure_writable, write_text
from pipeline.reading import CacheConfig
from pipeline.errors import PhonerecError
from pipeline.options import Options, Range, option
from training.config import TrainConfig

from . import report
from .space import Param, apply, base_point
from .trial import Outcome, child_env, run_trial

HEARTBEAT_S = 60          # a running trial's heartbeat in the storage; 3 missed: a later sweep marks it failed
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# A recipe's keys that are where and how this machine runs, not the recipe: best.yaml leaves them out.
RUN_ONLY = ("shards", "weights", "results", "resume", "progress", "device", "tensorboard",
            *(f.name for f in dataclasses.fields(CacheConfig)))


@dataclass
class SweepConfig(Options):
    """`phonerec sweep`'s own options (the base recipe of the trials is a TrainConfig)."""

    space: str = option("", path="existing-file", required=True, metavar="FILE",
                        help="The search space: a YAML mapping of training options and model settings to ranges "
                             "(configs/sweep-cpu.yaml, configs/sweep-gpu.yaml).")
    study: str = option("", required=True, metavar="NAME",
                        help="The study's name: the same name (and storage) continues it.")
    storage: str = option("", metavar="URL",
                          help="Any Optuna storage, e.g. postgresql://user:password@host/db; several machines (or "
                               "sweeps) on one storage and study share the work.  [default: "
                               "sqlite:///<results>/sweep.db]")
    trials: int = option(20, range=Range(0), help="Trials the study should hold, counting those run before "
                                                 "(interrupted ones not counted; 0 = no limit, with --minutes).")
    minutes: float = option(0.0, range=Range(0), help="Start no trial after this many minutes, nor one whose "
                                                     "time budget would not end by then (0 = no limit).")
    trial_minutes: float = option(0.0, range=Range(0), metavar="MINUTES",
                                  help="Each trial's --time-budget (0 = the recipe's time_budget, or its epochs).")
    devices: str = option("", metavar="LIST",
                          help="One worker per entry, on one study: GPU indices (0,1,2,3) or cpu (cpu,cpu).  "
                               "[default: one worker, on --device]")
    pruner: str = option("median", choices=("median", "hyperband", "none"),
                         help="Stops a trial whose dev PER at an epoch is worse than the median of the trials' "
                              "at that epoch (median), or by successive halving (hyperband).")
    startup_trials: int = option(5, range=Range(0), help="Trials sampled at random before TPE models the space, "
                                                        "and finished before the median pruner prunes.")
    warmup_epochs: int = option(1, range=Range(0), help="Epochs a trial trains before it may be pruned.")
    sampler_seed: int = option(0, range=Range(0), help="Seeds the sampler (the trials train with --seed).")
    dry_run: bool = option(False, help="Check the space against the base recipe, print both and run nothing.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not STUDY_NAME.fullmatch(self.study):
            raise ValueError(f"study (--study): {self.study!r}: letters, digits, '.', '_' and '-' only (it names a "
                             "folder)")
        if not self.trials and not self.minutes:
            raise ValueError("trials (--trials): 0 needs --minutes: give either a number of trials or minutes")
        self.device_list()

    def device_list(self) -> list[str]:
        """The workers' devices ('' for one worker on the recipe's --device)."""
        out = [d.strip() for d in self.devices.split(",") if d.strip()] if self.devices else [""]
        for d in out:
            if d and d != "cpu" and not d.isdigit():
                raise ValueError(f"devices (--devices): {d!r} is neither a GPU index nor cpu")
        return out


@dataclass
class Sweep:
    """What stays fixed during a sweep, and the workers' shared state."""

    cfg: SweepConfig
    base: TrainConfig
    space: list[Param]
    study: object
    log: object
    bar: object
    stop: threading.Event
    lock: threading.Lock
    started: float
    interrupted: bool = False
    error: BaseException | None = None          # what stopped a worker (raised by run_sweep)

    @property
    def folder(self) -> Path:
        return Path(self.base.results) / self.cfg.study

    def budget_minutes(self) -> float:
        return self.cfg.trial_minutes or self.base.time_budget


def storage_url(cfg: SweepConfig, base: TrainConfig) -> str:
    """--storage, or SQLite in RESULTS; a plain postgresql:// URL goes through psycopg (3), the
    driver the sweep extra installs (SQLAlchemy's default for it differs between its versions)."""
    url = cfg.storage or f"sqlite:///{(Path(base.results) / 'sweep.db').resolve()}"
    return re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)


def redact(url: str) -> str:
    """A storage URL without its password, for messages."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


def open_study(cfg: SweepConfig, base: TrainConfig):
    """The study (created, or loaded to continue it) with a seeded TPE sampler and the pruner."""
    try:
        import optuna
    except ModuleNotFoundError:
        raise PhonerecError("phonerec sweep needs Optuna: pip install -e '.[sweep]' (make setup installs it)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeats are "experimental" in Optuna (since 2.9): said once per use, nothing for a user to do
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ...and meant for Study.optimize: this sweep's ask/tell loop beats itself (sweep/trial.py)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    url = storage_url(cfg, base)
    try:
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S)
        study = optuna.create_study(study_name=cfg.study, storage=storage, load_if_exists=True, direction="minimize")
        # a trial left running by a sweep that was killed (no heartbeat for 3 minutes): failed
        optuna.storages.fail_stale_trials(study)
    except Exception as exc:          # noqa: BLE001 - a driver's, SQLAlchemy's or Optuna's error: one line
        raise PhonerecError(f"--storage {redact(url)}: cannot open the study: "
                            f"{redact(' '.join(str(exc).split()))[:300]}; check the URL, the server and its "
                            "driver (pip install -e '.[sweep]')") from None
    # Seeded by the trials already there too: a continued sweep does not draw its first points again.
    seed = cfg.sampler_seed * 100_003 + len(study.trials)
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials)
    study.pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials,
                                                                  n_warmup_steps=cfg.warmup_epochs),
                    "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.warmup_epochs)),
                    "none": optuna.pruners.NopPruner}[cfg.pruner]()
    return study


def counted(study) -> int:
    """Trials that count towards --trials: finished (not interrupted) or running."""
    from optuna.trial import TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state != TrialState.WAITING and not t.user_attrs.get("interrupted"))


def run_sweep(cfg: SweepConfig, base: TrainConfig, space: list[Param], log=print, progress: bool = True) -> dict:
    """Run trials until --trials or --minutes (or Ctrl-C); write the outputs after every trial.
    Returns {"interrupted", "ran", "best"}."""
    from tqdm import tqdm
    devices = cfg.device_list()
    if not base.dev:
        raise PhonerecError("a sweep scores its trials on the dev split: give one (--dev)")
    ensure_writable(Path(base.results) / cfg.study)      # one line now, not a worker's error later
    ensure_writable(Path(base.weights) / cfg.study)
    study = open_study(cfg, base)
    _first_the_base_recipe(study, base, space, log)
    before = counted(study)
    log(f"study {cfg.study} in {redact(storage_url(cfg, base))}: {before} trial(s) so far; "
        f"{len(devices)} worker(s); outputs in {Path(base.results) / cfg.study}")
    bar = tqdm(total=_expected(cfg, base, before, len(devices)), initial=before, desc=f"sweep {cfg.study}",
               unit="trial", disable=not progress, dynamic_ncols=True)
    say = (lambda m: bar.write(m, file=sys.stderr)) if progress else log      # lines above the bar
    sw = Sweep(cfg, base, space, study, say, bar, threading.Event(), threading.Lock(), time.monotonic())
    workers = [threading.Thread(target=_worker, args=(sw, d, devices.count("cpu")), daemon=True) for d in devices]
    with _signals(sw):
        for w in workers:
            w.start()
        while any(w.is_alive() for w in workers):
            for w in workers:
                w.join(0.2)
    bar.close()
    if sw.error is not None:
        raise sw.error
    written = report.write_all(study, sw.folder, space, log)
    return {"interrupted": sw.interrupted, "ran": counted(study) - before, "best": written.get("best")}


def _first_the_base_recipe(study, base: TrainConfig, space: list[Param], log) -> None:
    """A new study's first trial trains the base recipe itself (its values enqueued)."""
    if study.trials:
        return
    point, why = base_point(base, space)
    if point is None:
        log(f"the base recipe is not a point of the space ({why}): no trial of it to compare with")
        return
    study.enqueue_trial(point, user_attrs={"base_recipe": True})


def _expected(cfg: SweepConfig, base: TrainConfig, before: int, workers: int) -> int | None:
    """The trials the study will hold at the end (the progress bar's total, for its ETA): --trials,
    or what fits in --minutes at the trials' budget."""
    budget = cfg.trial_minutes or base.time_budget
    fit = before + workers * int(cfg.minutes // budget) if cfg.minutes and budget else None
    if cfg.trials:
        return max(before, min(cfg.trials, fit) if fit is not None else cfg.trials)
    return fit


class _signals:
    """Ctrl-C or SIGTERM: stop the running trials with their checkpoints, start no other."""

    def __init__(self, sw: Sweep):
        self.sw, self.old = sw, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.sw.stop.is_set():
            self.sw.log("stopping: the running trial(s) write their checkpoints first")
        self.sw.interrupted = True
        self.sw.stop.set()

    def __exit__(self, *exc):
        for sig, h in self.old.items():
            signal.signal(sig, h)


def _may_start(sw: Sweep) -> bool:
    """Another trial fits in --trials and --minutes (called under the lock)."""
    if sw.stop.is_set():
        return False
    if sw.cfg.trials and counted(sw.study) >= sw.cfg.trials:
        return False
    if sw.cfg.minutes:
        elapsed = (time.monotonic() - sw.started) / 60
        return elapsed + sw.budget_minutes() <= sw.cfg.minutes
    return True


def _worker(sw: Sweep, device: str, cpu_workers: int) -> None:
    """One device's loop; an error of the sweep itself (not of a trial: a full disk, a lost
    database) stops every worker and is raised by run_sweep."""
    try:
        _loop(sw, device, cpu_workers)
    except BaseException as exc:        # noqa: BLE001 - handed to the main thread
        sw.error = sw.error or exc
        sw.stop.set()


def _loop(sw: Sweep, device: str, cpu_workers: int) -> None:
    """Ask, train, tell, write the outputs; until --trials, --minutes or a stop."""
    env = child_env(device, cpu_workers)
    while True:
        with sw.lock:
            if not _may_start(sw):
                return
            trial = sw.study.ask({p.name: p.distribution() for p in sw.space})
        try:
            outcome = _run(sw, trial, device, env)
        except BaseException:           # never leave a trial RUNNING in the storage
            sw.study.tell(trial, state=_state("failed"), skip_if_finished=True)
            raise
        with sw.lock:
            frozen = _tell(sw, trial, outcome)
            sw.bar.update(1 if outcome.state != "interrupted" else 0)
            sw.log(report.trial_line(frozen))
            report.write_all(sw.study, sw.folder, sw.space, lambda *_: None)


def _run(sw: Sweep, trial, device: str, env: dict) -> Outcome:
    """The trial's recipe and folders, then the trial itself."""
    name = f"trial-{trial.number:04d}"
    results, weights = sw.folder / name, Path(sw.base.weights) / sw.cfg.study / name
    results.mkdir(parents=True, exist_ok=True)
    # a folder of an earlier study of this name (its storage since deleted): its epochs are not this trial's
    (results / "metrics.jsonl").unlink(missing_ok=True)
    budget = sw.budget_minutes()
    recipe = apply(sw.base.to_dict(), sw.space, trial.params)
    run = {**recipe, "weights": str(weights), "results": str(results), "time_budget": budget,
           "tune_decoding": False, "resume": False, "progress": False}
    if device == "cpu":
        run["device"] = "cpu"
    import yaml
    write_text(results / "recipe.yaml", yaml.safe_dump(run, sort_keys=False))
    trial.set_user_attr("recipe", {k: v for k, v in recipe.items() if k not in RUN_ONLY})
    trial.set_user_attr("folder", str(results))
    trial.set_user_attr("weights", str(weights))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{device or sw.base.device}")
    trial.set_user_attr("trial_minutes", budget)
    limit = budget * 90 + 300 if budget else None       # 1.5 x the budget and 5 minutes: then it is stopped
    storage = sw.study._storage            # Optuna's own optimize() beats the same way
    return run_trial(trial, results / "recipe.yaml", results / "metrics.jsonl", results / "train.log", env,
                     sw.stop, limit, beat=lambda: storage.record_heartbeat(trial._trial_id))


def _state(name: str):
    from optuna.trial import TrialState
    return {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(name, TrialState.FAIL)


def _tell(sw: Sweep, trial, outcome: Outcome):
    """Record the outcome in the study; returns the finished trial."""
    trial.set_user_attr("minutes", round(outcome.minutes, 3))
    trial.set_user_attr("dev_per_by_epoch", [outcome.pers[e] for e in sorted(outcome.pers)])
    if outcome.error:
        trial.set_user_attr("error", outcome.error)
    if outcome.state == "interrupted":
        trial.set_user_attr("interrupted", True)
    if outcome.state == "complete":
        return sw.study.tell(trial, outcome.value)
    return sw.study.tell(trial, state=_state(outcome.state))
