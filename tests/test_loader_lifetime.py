"""The training loader's workers live exactly as long as its iterator (issue 29, item 3): close(),
dropping the iterator, or a damaged shard ends every worker at once (also one blocked in a
stalled read, which ignores SIGTERM) and reaps it, no zombie or orphan is left, the DataLoader's
SIGCHLD handler reports none of them as failed, and all of it through public DataLoader API."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline import manifest as mf
from tests.conftest import ROOT, TRAIN
from training.data import (
    ShardLoader,
    ShardReadError,
    _worker_ignores_stop_signals,
    make_loader,
    pack,
)
from training.plan import BatchOptions, plan_epoch

QUICK = 3.0         # seconds: the DataLoader's own shutdown waits 5 s for each blocked worker
SAMPLES = {r: (np.ones((5 + r, 4), np.float16), np.arange(1, 3 + r, dtype=np.uint8)) for r in range(2)}


def children() -> set[int]:
    """This process's child pids, zombies included (the ppid field of /proc/<pid>/stat)."""
    me, out = os.getpid(), set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                out.add(int(d.name))
        except (OSError, IndexError, ValueError):
            continue
    return out


def gone(pids: set[int]) -> bool:
    """No process left with these pids: not running, not a zombie, not an orphan."""
    return all(not Path(f"/proc/{pid}").exists() for pid in pids)


class Stalling(IterableDataset):
    """Worker 0 yields one batch, then blocks as in a stalled fetch; worker 1 blocks at once, or
    raises ShardReadError ("error")."""

    ring = None                     # as PlannedShards without a ring: batches travel as buffers

    def __init__(self, error: bool = False):
        self.error = error

    def __iter__(self):
        if get_worker_info().id == 0:
            yield pack(np.arange(2), SAMPLES, True)
        elif self.error:
            raise ShardReadError("shard x.tar: crc32 differs; rebuild it")
        time.sleep(600)


def stalling_iter(error: bool = False):
    """(the iterator, its worker pids) of a 2-worker ShardLoader over Stalling."""
    loader = ShardLoader(Stalling(error), batch_size=None, num_workers=2, generator=torch.Generator(),
                         worker_init_fn=_worker_ignores_stop_signals)
    before = children()
    it = iter(loader)
    workers = children() - before
    assert len(workers) == 2
    return it, workers


def test_close_ends_blocked_workers_at_once_and_twice_is_harmless():
    it, workers = stalling_iter()
    assert next(it).rows.tolist() == [0, 1]
    handler = signal.getsignal(signal.SIGCHLD)
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < QUICK
    assert gone(workers)
    assert signal.getsignal(signal.SIGCHLD) is handler         # set aside only while they were reaped
    subprocess.run(["true"], check=True)    # a later SIGCHLD: no "DataLoader worker ... killed" error
    time.sleep(0.1)
    it.close()
    with pytest.raises(StopIteration):
        next(it)


def test_dropping_the_iterator_ends_its_workers():
    it, workers = stalling_iter()
    next(it)
    t0 = time.monotonic()
    del it
    assert time.monotonic() - t0 < QUICK and gone(workers)


def test_an_error_in_one_worker_ends_every_worker_at_once():
    it, workers = stalling_iter(error=True)
    next(it)
    t0 = time.monotonic()
    with pytest.raises(ShardReadError) as err:
        next(it)
    assert time.monotonic() - t0 < QUICK and gone(workers)
    assert str(err.value) == "shard x.tar: crc32 differs; rebuild it"
    assert err.value.__context__ is None and err.value.__cause__ is None     # no worker traceback
    subprocess.run(["true"], check=True)
    with pytest.raises(StopIteration):
        next(it)


def tiny_plan(shards: Path, workers: int):
    m = mf.load(shards, TRAIN)
    return m, plan_epoch(m, seed=0, epoch=0, workers=workers, opts=BatchOptions(max_frames=8000, max_utts=3))


@pytest.mark.parametrize("workers", [0, 2])
def test_close_mid_epoch_on_real_shards(tiny_shards, workers):
    m, plan = tiny_plan(tiny_shards, workers)
    before = children()
    it = iter(make_loader(m, plan))
    started = children() - before
    assert len(started) == workers
    assert len(next(it).rows) > 0
    it.close()
    it.close()
    assert gone(started) and children() <= before
    with pytest.raises(StopIteration):
        next(it)


def test_a_damaged_shard_ends_every_worker(pipe, tiny_shards, tmp_path):
    shards = pipe.copy_tree(tiny_shards, tmp_path / "shards")
    m, plan = tiny_plan(shards, 2)
    victim = m.shard_paths()[plan.windows[-1][-1].shards[-1]]     # read late, after good batches
    os.truncate(victim, victim.stat().st_size // 2)
    before = children()
    it = iter(make_loader(m, plan))
    started = children() - before
    with pytest.raises(ShardReadError, match=re.escape(victim.name)):
        for _ in it:
            pass
    assert gone(started) and children() <= before


def test_training_makes_no_private_dataloader_calls():
    private = re.compile(r"_shutdown_workers|\._workers\b|\._iterator\b")
    found = [f"{p.relative_to(ROOT)}:{i}" for folder in ("training", "bench") for p in (ROOT / folder).rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if private.search(line)]
    assert not found


HOLDER = r'''
import os, sys, time
from pathlib import Path
import numpy as np, torch
from torch.utils.data import IterableDataset, get_worker_info
from training.data import ShardLoader, _worker_ignores_stop_signals, pack

class HoldsTheStopLock(IterableDataset):
    """Worker 1 takes the lock of the DataLoader's done event (found in its worker loop's frame),
    as torch's worker loop does for a moment on every task, and stays there."""
    ring = None

    def __iter__(self):
        if get_worker_info().id == 0:
            yield pack(np.arange(1), {0: (np.ones((3, 2), np.float16), np.ones(2, np.uint8))}, True)
        else:                       # once the trainer has its first batch (the others' loops need the lock too)
            while not Path(os.environ["FIRST"]).exists():
                time.sleep(0.01)
            f = sys._getframe()
            while "done_event" not in f.f_locals:
                f = f.f_back
            with f.f_locals["done_event"]._cond:
                print("held", flush=True)
                Path(os.environ["HELD"]).touch()
                time.sleep(600)
        time.sleep(600)

it = iter(ShardLoader(HoldsTheStopLock(), batch_size=None, num_workers=2, generator=torch.Generator(),
                      worker_init_fn=_worker_ignores_stop_signals))
next(it)
Path(os.environ["FIRST"]).touch()
while not Path(os.environ["HELD"]).exists():
    time.sleep(0.01)
it.close()
print("closed", flush=True)
'''


def test_close_while_a_worker_holds_the_dataloaders_stop_lock(tmp_path):
    """A worker stopped inside the lock of the DataLoader's done event would leave that lock held
    forever, and the DataLoader's own shutdown (Event.set) would wait for it: close() first asks
    the workers to leave (an exception that unwinds their `with` blocks), and kills only those that
    did not. Run in a child process: the old close() hangs there."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FIRST=str(tmp_path / "first"), HELD=str(tmp_path / "held"))
    try:
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env,
                             check=False)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"close() hung: {e.stdout!r}")      # (bytes, whatever text= says)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["held", "closed"]
    assert "Traceback" not in out.stderr
