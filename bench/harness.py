"""The benchmarks' one way to run a measured child process (each measurement in a fresh
interpreter): its stdout's event lines (`emit` in the child) parsed as they come, a sampler
called while it runs (e.g. the process tree's memory), the last lines of its stderr, and what
the kernel counted for it and its descendants when it ended (CPU, faults, peak RSS)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench import ROOT

EVENT = "@@BENCH "       # a stdout line of the child: EVENT + {"event": ..., ...} as JSON


def emit(event: dict) -> None:
    """In the child: one event for the parent (run_child's events, on_event)."""
    print(EVENT + json.dumps(event), flush=True)


@dataclass
class ChildRun:
    returncode: int
    started: float                     # time.time() at the spawn (the events' clock)
    wall_s: float
    cpu_s: float                       # user + system, the child and its reaped descendants
    sys_s: float
    minor_faults: int
    maxrss_mb: float                   # the largest process of its tree
    events: list[dict] = field(default_factory=list)
    stderr: str = ""                   # its last 60 lines

    def result(self) -> dict | None:
        """The "result" event's payload, when the child succeeded."""
        found = [e for e in self.events if e.get("event") == "result"]
        return found[-1].get("result") if found and self.returncode == 0 else None


def run_child(cmd: list[str], *, cwd=ROOT, env: dict | None = None, timeout: float | None = None,
              on_event: Callable[[dict, int], None] | None = None, tick: Callable[[int], None] | None = None,
              every: float = 0.5) -> ChildRun:
    """Run `cmd` (unbuffered), calling `on_event(event, pid)` for each event line and `tick(pid)`
    every `every` seconds; killed after `timeout` seconds (a hang, not a measurement)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    started, t0 = time.time(), time.perf_counter()
    events: list[dict] = []
    tail: list[str] = []
    done = threading.Event()

    def read_out():
        for line in proc.stdout:
            if line.startswith(EVENT):
                events.append(json.loads(line[len(EVENT):]))
                if on_event is not None:
                    on_event(events[-1], proc.pid)

    def read_err():
        for line in proc.stderr:
            tail.append(line)
            del tail[:-60]

    def sample():
        while tick is not None and not done.wait(every):
            tick(proc.pid)
    threads = [threading.Thread(target=f, daemon=True) for f in (read_out, read_err, sample)]
    for t in threads:
        t.start()
    killer = threading.Timer(timeout, proc.kill) if timeout else None
    if killer is not None:
        killer.start()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    done.set()
    if killer is not None:
        killer.cancel()
    for t in threads:
        t.join(timeout=5)
    return ChildRun(proc.returncode, started, wall, ru.ru_utime + ru.ru_stime, ru.ru_stime, ru.ru_minflt,
                    ru.ru_maxrss / 1024, events, "".join(tail))
