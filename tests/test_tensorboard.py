"""`phonerec train --tensorboard` (training/tensorboard.py): the events hold metrics.jsonl's scalars
at the same steps; a resumed or fresh run in the same folder shows each step once (the epochs
metrics.jsonl forgot are purged); without the flag nothing is written; without the package the
run stops before training, in one line naming the extra."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (DEV, TEST, TRAIN, assert_one_line_error, built_shards, cli, load_last, metrics,
                           train_and_stop, train_args, train_config)
from training import tensorboard as tb

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("tensorboard")        # the `test` extra installs it


@pytest.fixture(scope="module")
def shards(pipe, tmp_path_factory) -> Path:
    """24 short learnable training utterances in 3 shards, 4 dev."""
    return built_shards(pipe, tmp_path_factory.mktemp("tensorboard"), {TRAIN: 24, DEV: 4, TEST: 2}, min_shards=3,
                        seed=13, lengths=(60, 200))


def events(run: Path) -> dict[str, list]:
    """Tag -> [ScalarEvent] as TensorBoard shows them (purges applied), from run/results."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "results"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def event_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*tfevents*"))


def assert_events_match_metrics(run: Path) -> dict[str, list]:
    """Every scalar of every metrics.jsonl row, at the row's step, once (float32: how events keep them)."""
    rows, seen = metrics(run), {k: v for k, v in events(run).items() if not k.startswith("step/")}
    expected: dict[str, list] = {}
    for r in rows:
        for tag, value in tb.scalars(r).items():
            expected.setdefault(tag, []).append((r["step"], value))
    assert sorted(seen) == sorted(expected)
    for tag, want in expected.items():
        got = [(e.step, e.value) for e in seen[tag]]
        assert [s for s, _ in got] == [s for s, _ in want], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-6, err_msg=tag)
    return seen


def test_scalars_are_the_records_numbers():
    record = {"epoch": 1, "step": 40, "train_loss": 1.5, "dev_loss": None, "lr": 1e-3, "world": 2,
              "skipped_shards": ["a/b.tar"], "flag": True, "data_wait_fraction": 0.25,
              "network": {"fetched": 3, "bytes": 1000}}
    assert tb.scalars(record) == {"run/epoch": 1.0, "loss/train": 1.5, "lr": 1e-3, "run/world": 2.0,
                                  "data/wait_fraction": 0.25, "network/fetched": 3.0, "network/bytes": 1000.0}


def test_events_hold_the_metrics_of_every_epoch(shards, tmp_path, monkeypatch):
    monkeypatch.setattr(tb, "STEP_EVERY", 2)          # the tiny run has a few steps per epoch
    cli(*train_args(shards, tmp_path, "--epochs", "2", "--tensorboard"))
    rows = metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    seen = assert_events_match_metrics(tmp_path)
    for tag in ("loss/train", "loss/dev", "dev/distance", "dev/per", "lr", "speed/frames_per_s",
                "data/wait_fraction", "data/padding_efficiency", "speed/epoch_seconds"):
        assert [e.step for e in seen[tag]] == [r["step"] for r in rows], tag
    assert [p.parent for p in event_files(tmp_path)] == [tmp_path / "results"]
    # per step too: the training loss and the learning rate every STEP_EVERY steps
    every = [s for s in range(1, rows[-1]["step"] + 1) if s % tb.STEP_EVERY == 0]
    all_events = events(tmp_path)
    assert every and [e.step for e in all_events["step/train_loss"]] == every == [e.step for e in all_events["step/lr"]]
    assert all(e.value > 0 for e in all_events["step/train_loss"])


def test_resumed_and_fresh_runs_show_each_step_once(shards, tmp_path):
    """An epoch redone after an older checkpoint came back, a run resumed mid-epoch, and a fresh
    run in the same folder: TensorBoard shows what metrics.jsonl holds, each step once."""
    w = tmp_path / "weights"
    cfg = dict(tensorboard=True, resume=True)
    cli(*train_args(shards, tmp_path, "--epochs", "1", "--tensorboard"))
    shutil.copyfile(w / "last.pt", tmp_path / "epoch1.pt")
    steps = load_last(tmp_path).global_step
    cli(*train_args(shards, tmp_path, "--epochs", "2", "--tensorboard", "--resume"))
    shutil.copyfile(tmp_path / "epoch1.pt", w / "last.pt")        # epoch 2 is redone
    redo = time.time()
    cli(*train_args(shards, tmp_path, "--epochs", "2", "--tensorboard", "--resume"))
    seen = assert_events_match_metrics(tmp_path)
    assert [e.step for e in seen["loss/train"]] == [steps, 2 * steps]
    assert seen["loss/train"][1].wall_time >= redo                  # the redone epoch's event, not the first
    # Stopped in the middle of epoch 3, then resumed: the events of epochs 1-2 stay, epoch 3 comes once.
    train_and_stop(train_config(shards, tmp_path, epochs=3, **cfg), after=1)
    assert [e.step for e in events(tmp_path)["loss/train"]] == [steps, 2 * steps]
    cli(*train_args(shards, tmp_path, "--epochs", "3", "--tensorboard", "--resume"))
    assert [e.step for e in assert_events_match_metrics(tmp_path)["loss/train"]] == [steps, 2 * steps, 3 * steps]
    # A fresh run (no --resume) starts new curves, as metrics.jsonl does.
    cli(*train_args(shards, tmp_path, "--epochs", "1", "--tensorboard"))
    assert [e.step for e in assert_events_match_metrics(tmp_path)["loss/train"]] == [steps]


def test_no_events_without_the_flag(shards, tmp_path):
    cli(*train_args(shards, tmp_path, "--epochs", "1", "--max-steps", "1"))
    assert len(metrics(tmp_path)) == 1
    assert event_files(tmp_path) == []


def test_missing_package_is_a_one_line_error_before_training(shards, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)           # `import tensorboard` fails
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--tensorboard"), ok=False)
    assert_one_line_error(res, "--tensorboard", "pip install -e '.[tensorboard]'")
    assert not (tmp_path / "weights" / "last.pt").exists() and metrics(tmp_path) == []
    assert event_files(tmp_path) == []
