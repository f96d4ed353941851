"""One trial: `phonerec train` in a process of its own, its metrics.jsonl read as it grows, each
epoch's dev PER reported to the pruner, and the process stopped cleanly (Ctrl-C: it writes its
checkpoint first) when the pruner, the sweep or the time limit says so."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]      # the folder holding the packages, for the child's imports
POLL_S = 0.5
HEARTBEAT_S = 30                                 # within the storage's heartbeat interval (sweep/study.py)
STOP_WAIT_S = 120                                # how long a stopped trial may take to write its checkpoint


@dataclass
class Outcome:
    """How a trial ended: state is complete, pruned, failed or interrupted."""

    state: str
    pers: dict[int, float] = field(default_factory=dict)     # epoch -> dev PER (the better weights')
    minutes: float = 0.0
    error: str = ""

    @property
    def value(self) -> float | None:
        return min(self.pers.values()) if self.pers else None


def epoch_pers(metrics: Path) -> tuple[dict[int, float], int]:
    """epoch -> dev PER of the trained or the averaged weights, whichever is lower (what best.pt
    keeps), from the complete lines of a metrics.jsonl that may be growing; and the epochs the run
    plans (its last line's)."""
    try:
        text = metrics.read_text()
    except OSError:
        return {}, 0
    out, planned = {}, 0
    for line in text.split("\n")[:-1]:            # the last piece has no newline yet: still being written
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        pers = [v for v in (rec.get("dev_per"), rec.get("dev_per_averaged")) if isinstance(v, (int, float))]
        if pers and isinstance(rec.get("epoch"), int):
            out[rec["epoch"]] = float(min(pers))
            planned = rec.get("planned_epochs") if isinstance(rec.get("planned_epochs"), int) else 0
    return out, planned


def child_env(device: str, cpu_workers: int) -> dict:
    """The trial's environment: its device (a GPU index: CUDA_VISIBLE_DEVICES; cpu: none), this
    package importable, and the cores shared when several CPU trials run at once."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    elif device:
        env["CUDA_VISIBLE_DEVICES"] = device
    if device == "cpu" and cpu_workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cpu_workers))
    return env


def run_trial(trial, recipe: Path, metrics: Path, log: Path, env: dict, stop: threading.Event,
              limit_s: float | None, beat=lambda: None) -> Outcome:
    """Train `recipe` in a child process; report each epoch's dev PER to `trial` (an Optuna
    trial) and stop the child when it should be pruned, when `stop` is set or after `limit_s`;
    `beat()` every HEARTBEAT_S tells the storage the trial is alive."""
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "phonerec", "train", "--config", str(recipe), "--quiet"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        reported: set[int] = set()
        try:
            reason = _watch(proc, trial, metrics, stop, t0, limit_s, reported, beat)
        finally:
            end(proc)
    pers, _ = epoch_pers(metrics)
    _report(trial, pers, 0, reported)             # an epoch that ended as the child did
    minutes = (time.monotonic() - t0) / 60
    return _outcome(reason, proc.returncode, pers, minutes, log, limit_s)


def _watch(proc, trial, metrics: Path, stop: threading.Event, t0: float, limit_s: float | None,
           reported: set[int], beat) -> str | None:
    """Until the child ends: returns why it was stopped (None: it ended by itself)."""
    last_beat = 0.0
    while proc.poll() is None:
        if time.monotonic() - last_beat >= HEARTBEAT_S:
            beat()
            last_beat = time.monotonic()
        if _report(trial, *epoch_pers(metrics), reported):
            return "pruned"
        if stop.is_set():
            return "interrupted"
        if limit_s is not None and time.monotonic() - t0 > limit_s:
            return "time"
        time.sleep(POLL_S)
    return None


def _report(trial, pers: dict[int, float], planned: int, reported: set[int]) -> bool:
    """Report the epochs not reported yet; True when the pruner says stop (never after the last
    planned epoch: that run has done its work). `planned` 0: the run is over."""
    prune = False
    for epoch in sorted(set(pers) - reported):
        trial.report(pers[epoch], epoch)
        reported.add(epoch)
        prune = bool(planned) and epoch < planned and trial.should_prune()
    return prune


def end(proc: subprocess.Popen) -> None:
    """Stop the child as Ctrl-C does (it writes its checkpoint and exits); after STOP_WAIT_S, kill it
    and whatever it started."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _outcome(reason: str | None, rc: int, pers: dict[int, float], minutes: float, log: Path,
             limit_s: float | None) -> Outcome:
    if reason == "pruned":
        return Outcome("pruned", pers, minutes)
    if reason == "interrupted":
        return Outcome("interrupted", pers, minutes, "interrupted (Ctrl-C); its checkpoint is kept")
    if reason == "time":
        return Outcome("failed", pers, minutes, f"still training after {limit_s / 60:.0f} min (its time budget "
                                                "and then some); stopped with a checkpoint")
    if rc != 0:
        return Outcome("failed", pers, minutes, error_of(rc, log))
    if not pers:
        return Outcome("failed", pers, minutes, f"no epoch with a dev PER finished (see {log})")
    return Outcome("complete", pers, minutes)


def error_of(rc: int, log: Path) -> str:
    """What went wrong, in one line: the child's `Error:` line, the signal that killed it, or its last line."""
    try:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        lines = []
    errors = [x for x in lines if x.startswith("Error:")]
    if errors:
        return errors[-1][len("Error:"):].strip()
    if rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return f"killed by {name}" + (" (out of memory?)" if -rc == signal.SIGKILL else "")
    return f"exit status {rc}" + (f": {lines[-1][:300]}" if lines else "")
