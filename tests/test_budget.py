"""Training to a time budget (training/budget.py, `--time-budget`) and the host tuning
(training/host.py, `--tune-host`): the plan's arithmetic, a run that follows its plan with the
schedule spanning it, the stop when epochs overrun, resume without re-planning, and the same
weights with the tuning on and off (trained and resumed both ways)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.helpers import (DEV, TEST, TRAIN, assert_one_line_error, assert_same_run, built_shards, cli, finish,
                           load_last, metrics, popen, train_and_stop, train_args, train_config)
from training import budget as B

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(pipe, tmp_path_factory) -> Path:
    """40 short learnable training utterances in 4 shards, 6 dev."""
    return built_shards(pipe, tmp_path_factory.mktemp("budget"), {TRAIN: 40, DEV: 6, TEST: 3}, min_shards=4,
                        seed=11, lengths=(60, 300))


@pytest.fixture
def fake_clock(monkeypatch):
    """budget.clock() reads this list's first item (seconds)."""
    now = [1000.0]
    monkeypatch.setattr(B, "clock", lambda: now[0])
    return now


@pytest.fixture
def planned(monkeypatch):
    """The plan forced to a number of epochs (the measured speed would make it the machine's);
    records the arguments plan_epochs was called with."""
    calls: list[tuple] = []

    def force(n: int):
        calls.clear()
        monkeypatch.setattr(B, "MEASURE_STEPS", 3)
        monkeypatch.setattr(B, "plan_epochs", lambda available, epoch_s, cap: calls.append(
            (available, epoch_s, cap)) or min(n, cap))
        return calls
    return force


# ------------------------------------------------------------------------------ the arithmetic

@pytest.mark.parametrize("available, epoch_s, cap, expected", [
    (600, 100, 20, 6), (599.9, 100, 20, 5), (50, 100, 20, 1), (10_000, 100, 20, 20), (600, 0, 7, 7),
])
def test_plan_epochs(available, epoch_s, cap, expected):
    assert B.plan_epochs(available, epoch_s, cap) == expected


def test_budget_measures_after_warmup_and_plans_from_padded_frames(fake_clock):
    b = B.Budget(seconds=600, cap=30)
    fake_clock[0] += 30                               # 30 s of setup before the first step
    assert [b.observe(s, 1.0, 1000) for s in range(1, B.WARMUP_STEPS + 1)] == [False] * B.WARMUP_STEPS
    assert b.timed == 0                               # warm-up steps are not timed
    seen = [b.observe(B.WARMUP_STEPS + i, 0.5, 1000) for i in range(1, B.MEASURE_STEPS + 1)]
    assert seen == [False] * (B.MEASURE_STEPS - 1) + [True]
    assert b.measured == pytest.approx(0.5 * B.MEASURE_STEPS) and b.frames == 1000 * B.MEASURE_STEPS
    # 0.5 ms a frame; an epoch of 90,000 training frames and 20,000 dev frames at DEV_COST.
    epochs = b.plan(b.measured, b.frames, 90_000, 20_000, available=570.0)
    epoch_s = 0.0005 * (90_000 + B.DEV_COST * 20_000)
    assert b.epoch_seconds == pytest.approx(epoch_s)
    assert epochs == b.planned == b.epochs == math.floor(570.0 / epoch_s)
    assert not b.observe(99, 1.0, 1000)               # planned once, never again
    # Planned in the second epoch (the first was shorter than the timed steps): that epoch counts.
    late = B.Budget(seconds=600, cap=10)
    assert late.plan(1.0, 2000, 100_000, 0, available=300.0, epochs_done=1) == 1 + 6
    assert B.Budget(seconds=600, cap=3).plan(1.0, 2000, 100_000, 0, available=300.0, epochs_done=1) == 3
    assert "time budget 10 min" in B.describe(b, 100) and f"-> {epochs} epoch(s)" in B.describe(b, 100)


def test_budget_keeps_its_clock_across_a_resume(fake_clock):
    b = B.Budget(seconds=600, cap=10, planned=4)
    fake_clock[0] += 200
    saved = b.to_json()
    assert saved["spent"] == 200
    fake_clock[0] += 5000                             # the run was down for a while
    again = B.Budget.from_json(saved)
    again.begin(B.clock())
    assert again.elapsed() == 200 and again.planned == 4
    # At 200 s with 2 of 4 epochs done, 430 s are left (SLACK included): two more of 150 s fit; of
    # 220 s, one; of 500 s, none: the plan is the 2 done, and the run stops.
    assert again.replan(2, 150, again.elapsed()) is None and again.planned == 4
    assert again.replan(2, 220, again.elapsed()) == 3 and again.epochs == 3
    assert again.replan(2, 500, again.elapsed()) == 2
    assert again.replan(2, 10_000, again.elapsed()) is None          # the plan is done: nothing to shrink


# ----------------------------------------------------------------------------------- runs

def test_time_budget_run_follows_its_plan_and_anneals(shards, tmp_path, planned):
    from training.train import train
    calls = planned(2)
    cfg = train_config(shards, tmp_path, epochs=5, time_budget=10.0, dev=DEV)
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert len(calls) == 1
    available, epoch_s, cap = calls[0]
    assert cap == 5 and 0 < available <= 600 and epoch_s > 0
    assert any("time budget 10 min" in ln and "-> 2 epoch(s)" in ln for ln in lines), lines
    rows = metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2] and {r["planned_epochs"] for r in rows} == {2}
    # The cosine schedule was stretched to the 2 planned epochs: its last step is at its floor.
    assert rows[-1]["lr"] == pytest.approx(0.02 * cfg.lr)
    ck = load_last(tmp_path)
    assert ck.budget["planned"] == 2 and ck.budget["cap"] == 5 and ck.epoch == 2
    assert ck.scheduler["lr_lambdas"][0]["total"] == 2 * (ck.global_step // 2)


def test_time_budget_resume_keeps_the_plan_and_is_exact(shards, tmp_path, planned):
    from training.train import train
    a, b = tmp_path / "a", tmp_path / "b"
    planned(2)
    train(train_config(shards, a, epochs=4, time_budget=10.0, dev=""), log=lambda m: None)
    steps = load_last(a).global_step // 2
    train_and_stop(train_config(shards, b, epochs=4, time_budget=10.0, dev=""), after=steps + 2)
    assert load_last(b).budget["planned"] == 2
    calls = planned(3)                                # a new measurement would plan 3: it must not be made
    res = cli(*train_args(shards, b, "--epochs", "4", "--time-budget", "10", "--dev", "", "--resume"))
    assert "resumed at epoch 2, step 2" in res.output and calls == []
    assert_same_run(a, b)


def test_time_budget_stops_when_the_next_epoch_would_overrun(shards, tmp_path, planned, monkeypatch):
    from training.train import train
    planned(3)
    monkeypatch.setattr(B, "SLACK", -1.0)             # any epoch "ends past the budget"
    lines: list[str] = []
    out = train(train_config(shards, tmp_path, epochs=5, time_budget=10.0, dev=""), log=lines.append)
    assert out["budget_stop"] and out["epoch"] == 1
    assert any("time budget: stopping after epoch 1 of the 3 planned" in ln for ln in lines), lines
    assert len(metrics(tmp_path)) == 1 and load_last(tmp_path).epoch == 1


def test_time_budget_options_are_checked(shards, tmp_path):
    res = cli(*train_args(shards, tmp_path, "--time-budget", "-1"), ok=False)
    assert res.exit_code == 2 and "Invalid value for '--time-budget'" in res.output
    res = cli(*train_args(shards, tmp_path, "--time-budget", "1", "--scheduler", "onecycle"), ok=False)
    assert_one_line_error(res, "--time-budget", "onecycle")


def _subprocess_train(shards, run: Path, *extra) -> str:
    res = finish(popen(train_args(shards, run, "--epochs", "2", "--dev", "", *extra)))
    assert res.returncode == 0, res.stderr
    return res.stderr


def test_host_tuning_on_and_off_train_and_resume_alike(shards, tmp_path):
    """Fresh processes (the allocator setting is per process): tuned, untuned, and an untuned and a
    tuned run each stopped mid-epoch and resumed the same way end with the same weights."""
    log_on = _subprocess_train(shards, tmp_path / "on")
    log_off = _subprocess_train(shards, tmp_path / "off", "--no-tune-host")
    assert "allocator: glibc malloc keeps freed memory" in log_on or "allocator: not glibc" in log_on
    assert "host tuning off" in log_off and "allocator:" not in log_off
    assert_same_run(tmp_path / "on", tmp_path / "off")
    steps = load_last(tmp_path / "on").global_step // 2
    for name, flag in (("resumed-off", "--no-tune-host"), ("resumed-on", "--tune-host")):
        run = tmp_path / name
        train_and_stop(train_config(shards, run, epochs=2, dev="", tune_host=flag == "--tune-host"),
                       after=steps + 1)
        _subprocess_train(shards, run, flag, "--resume")
        assert_same_run(tmp_path / "on", run)


def test_resuming_a_finished_budgeted_run_with_more_epochs_says_why_not(shards, tmp_path, planned):
    from training.train import train
    planned(2)
    train(train_config(shards, tmp_path, epochs=4, time_budget=10.0, dev=""), log=lambda m: None)
    before = (tmp_path / "weights" / "last.pt").read_bytes()
    res = cli(*train_args(shards, tmp_path, "--epochs", "6", "--time-budget", "10", "--dev", "", "--resume"),
              ok=False)
    assert_one_line_error(res, "--epochs 6", "planned 2 epoch(s)", "does not grow", "larger --time-budget")
    assert (tmp_path / "weights" / "last.pt").read_bytes() == before and len(metrics(tmp_path)) == 2
