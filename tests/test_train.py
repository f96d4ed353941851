"""Stage-2 trainer end to end: the `phonerec train` command alone and under torchrun (gloo, 2 ranks),
exact resumption, config files and Ctrl-C.

Every run trains for real on a small corpus of short synthetic utterances (so an epoch takes well
under a second on a CPU); what dominates is process start-up.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import manifest as mf
from tests.helpers import (DEV, MAX_FRAMES, TEST, TRAIN, assert_same_run, built_shards, cli, finish, load_last,
                           metrics, popen, torchrun, torchrun_popen, train_and_stop, train_args, train_config,
                           wait_for_checkpoint)
from training.plan import BatchOptions, plan_epoch

N_TRAIN = 64


# ------------------------------------------------------------------------------------ corpus

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fast_shards(pipe, tmp_path_factory) -> Path:
    """Short learnable utterances (60-400 frames): 64 train in 6 shards, 12 dev, 6 unlabelled test."""
    shards = built_shards(pipe, tmp_path_factory.mktemp("fast"), {TRAIN: N_TRAIN, DEV: 12, TEST: 6}, min_shards=6,
                          seed=5, lengths=(60, 400))
    m = mf.load(shards, TRAIN)
    assert m.num_utterances == N_TRAIN and len(m.shards) == 6
    return shards


def plan(shards, epoch=0, rank=0, world=1, workers=0, max_frames=MAX_FRAMES, seed=0):
    m = mf.load(shards, TRAIN)
    return plan_epoch(m, seed=seed, epoch=epoch, rank=rank, world=world, workers=workers,
                      opts=BatchOptions(max_frames=max_frames))


METRIC_KEYS = {"epoch", "step", "train_loss", "dev_loss", "dev_distance", "padding_efficiency", "lr", "frames_per_s"}


# ------------------------------------------------------------------------- 6. single process

def test_train_three_epochs(fast_shards, tmp_path):
    steps = plan(fast_shards).steps
    res = cli(*train_args(fast_shards, tmp_path, "--epochs", "3"))
    assert f"{steps} steps/epoch" in res.output
    rows = metrics(tmp_path)
    assert len(rows) == 3
    for e, r in enumerate(rows):
        assert METRIC_KEYS <= r.keys(), sorted(METRIC_KEYS - r.keys())
        assert r["epoch"] == e + 1 and r["step"] == (e + 1) * steps and r["world"] == 1
        assert all(np.isfinite(r[k]) for k in ("train_loss", "dev_loss", "dev_distance", "lr", "frames_per_s"))
        assert 0.5 < r["padding_efficiency"] <= 1.0
        assert r["frames_per_s"] > 0 and r["lr"] > 0 and r["dev_distance"] >= 0
        assert r["utterances"] == N_TRAIN and r["dropped_utterances"] == 0
    assert rows[2]["train_loss"] < rows[0]["train_loss"], [r["train_loss"] for r in rows]

    w = tmp_path / "weights"
    for name in ("last.pt", "best.pt", "config.json"):
        assert (w / name).is_file(), name
    state = load_last(tmp_path)
    assert (state.epoch, state.step, state.global_step) == (3, 0, 3 * steps)
    assert state.rank_steps == [3 * steps] and state.world == 1
    assert load_last(tmp_path, "best.pt").epoch >= 1
    cfg = json.loads((w / "config.json").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["preset"] == "model1"
    assert cfg["train"]["max_frames"] == MAX_FRAMES and cfg["parameters"] > 0
    png = (tmp_path / "results" / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000

    # a fresh run (no --resume) in the same folders starts new curves instead of appending
    cli(*train_args(fast_shards, tmp_path, "--epochs", "1"))
    assert [r["epoch"] for r in metrics(tmp_path)] == [1]


@pytest.mark.parametrize("recipe, downsampling", [("demo.yaml", 4), ("demo-gpu.yaml", 4)])
def test_demo_recipes_are_valid_configs(recipe, downsampling):
    """Both recipes `make demo` chooses between (CPU; CUDA) parse, name their epochs and build."""
    from tests.helpers import ROOT
    from training.config import TrainConfig, read_config_file
    from training.model import build_model
    values = read_config_file(ROOT / "configs" / recipe)
    cfg = TrainConfig.from_dict(values)
    assert "epochs" in values and cfg.model.get("input_norm") == "utterance"
    model = build_model(cfg.preset, **cfg.model)
    lp, lens = model(torch.zeros(2, 48, 15), torch.tensor([48, 30]))
    assert lp.shape[-1] == 43 and lens.tolist() == [48 // downsampling, -(-30 // downsampling)]


def test_train_budget_error_is_one_line(fast_shards, tmp_path):
    res = cli(*train_args(fast_shards, tmp_path, "--epochs", "1", "--max-frames", "100"), ok=False)
    assert res.exit_code != 0
    assert "--max-frames" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "weights" / "last.pt").exists()


# ---------------------------------------------------------------------- 7. two ranks (gloo)

DDP_EPOCHS = 3


@pytest.fixture(scope="module")
def ddp_run(fast_shards, tmp_path_factory):
    """An uninterrupted 2-rank run (3 epochs, with dev evaluation); read-only for the tests."""
    run = tmp_path_factory.mktemp("ddp_a")
    t0 = time.perf_counter()
    res = torchrun(train_args(fast_shards, run, "--epochs", str(DDP_EPOCHS)))
    print(f"2-rank run: {time.perf_counter() - t0:.1f} s")
    return run, res


@pytest.mark.slow
def test_ddp_two_ranks(fast_shards, ddp_run):
    run, res = ddp_run
    plans = [plan(fast_shards, rank=r, world=2) for r in range(2)]
    steps = plans[0].steps
    assert steps == plans[1].steps and 0 < steps < plan(fast_shards).steps
    # Rank 0 alone logs (once), with the planned step count.
    found = re.findall(r"(\d+) steps/epoch", res.stderr + res.stdout)
    assert found == [str(steps)], found
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == list(range(1, DDP_EPOCHS + 1))
    for e, r in enumerate(rows):
        assert r["world"] == 2 and r["step"] == (e + 1) * steps
        p = [plan(fast_shards, epoch=e, rank=k, world=2) for k in range(2)]
        used = sum(len(b) for q in p for b in q.sequence())
        assert r["utterances"] == used == N_TRAIN - r["dropped_utterances"]
        assert r["dev_loss"] is not None and np.isfinite(r["dev_loss"])
    assert rows[-1]["train_loss"] < rows[0]["train_loss"], [r["train_loss"] for r in rows]
    state = load_last(run)
    assert state.world == 2 and (state.epoch, state.step) == (DDP_EPOCHS, 0)
    assert state.global_step == DDP_EPOCHS * steps
    assert state.rank_steps == [DDP_EPOCHS * steps] * 2, "ranks ran different numbers of steps"
    assert len(state.rng) == 2


# ----------------------------------------------------------------------------------- 8. resume

def _stop_point(p) -> int:
    """A step inside the second window of worker 0: the first window is fully consumed before it."""
    first = len(p.windows[0][0].batches)
    k = first + 1
    assert 0 < k < p.steps and len(p.windows[0]) >= 2
    return k


def test_resume_single_process_is_exact_and_skips_consumed_shards(fast_shards, tmp_path, shard_reads):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--epochs", "2", "--dev", "")
    cli(*train_args(fast_shards, a, *common))

    p0, p1 = plan(fast_shards, epoch=0), plan(fast_shards, epoch=1)
    k = _stop_point(p0)
    assert k != len(p0.windows[0][0].batches)
    log = train_and_stop(train_config(fast_shards, b, epochs=2, dev=""), after=k)
    assert f"stopped at epoch 1, step {k}" in log
    state = load_last(b)
    assert (state.epoch, state.step, state.global_step) == (0, k, k)
    assert metrics(b) == []                     # no epoch finished

    reads = shard_reads
    reads.clear()
    res = cli(*train_args(fast_shards, b, *common, "--resume"))
    assert f"resumed at epoch 1, step {k}" in res.output
    # Epoch 1 from step k: the fully consumed first window is never read; then all of epoch 2.
    wins0 = p0.windows[0]
    expected = [w.shards for w in wins0[1:]] + [w.shards for w in p1.windows[0]]
    assert reads == expected
    assert wins0[0].shards not in reads[: len(wins0) - 1]

    assert (load_last(b).epoch, load_last(b).global_step) == (2, 2 * p0.steps)
    assert_same_run(a, b)
    assert [r["epoch"] for r in metrics(b)] == [1, 2]
    assert all(r["utterances"] == N_TRAIN for r in metrics(b))


def test_resume_with_loader_workers_is_exact(fast_shards, tmp_path):
    """Two DataLoader workers: after a resume the loader must restart its round-robin at the worker
    that was due next (odd stop step), or the batch order, and so the weights, would differ."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--epochs", "2", "--dev", "", "--workers", "2")
    cli(*train_args(fast_shards, a, *common))
    p = plan(fast_shards, workers=2)
    k = p.steps // 2 + 1 if (p.steps // 2) % 2 == 0 else p.steps // 2
    assert k % 2 == 1 and 0 < k < p.steps
    train_and_stop(train_config(fast_shards, b, epochs=2, dev="", workers=2), after=k)
    assert (load_last(b).epoch, load_last(b).step) == (0, k)
    cli(*train_args(fast_shards, b, *common, "--resume"))
    assert load_last(a).global_step == 2 * p.steps
    assert_same_run(a, b)


@pytest.mark.slow
def test_resume_two_ranks_is_exact(fast_shards, ddp_run, tmp_path):
    """A 2-rank run stopped by SIGTERM (torchrun passes it to its ranks, which checkpoint at the
    same step and exit), then resumed: the same weights as the uninterrupted run."""
    a, _ = ddp_run
    b = tmp_path / "b"
    p = plan(fast_shards, world=2)
    k = _stop_point(p)
    proc = torchrun_popen(train_args(fast_shards, b, "--epochs", str(DDP_EPOCHS), "--checkpoint-every", str(k)))
    try:
        wait_for_checkpoint(b / "weights", proc, reached=k)
    except BaseException:
        finish(proc, timeout=1)
        raise
    proc.send_signal(signal.SIGTERM)
    res = finish(proc)
    state = load_last(b)
    stopped = re.findall(r"stopped at epoch (\d+), step (\d+)", res.stderr)
    assert stopped, res.stderr
    epoch, step = int(stopped[-1][0]) - 1, int(stopped[-1][1])
    assert (state.epoch, state.step) == (epoch, step) and state.global_step >= k
    assert state.global_step < DDP_EPOCHS * p.steps, "the run ended before the signal"
    assert state.rank_steps == [state.global_step] * 2
    res = torchrun(train_args(fast_shards, b, "--epochs", str(DDP_EPOCHS), "--resume"))
    assert f"resumed at epoch {epoch + 1}, step {step}" in res.stderr
    assert load_last(b).rank_steps == [DDP_EPOCHS * p.steps] * 2
    assert_same_run(a, b, dev=True)


def test_resume_at_epoch_boundary_keeps_pinned_options(fast_shards, tmp_path):
    """Stopped exactly at the end of an epoch (before its evaluation), then resumed with another
    --seed/--max-frames: the checkpoint's values are kept (they fix the data order) and the epoch's
    metrics come out whole."""
    steps = plan(fast_shards).steps
    train_and_stop(train_config(fast_shards, tmp_path, epochs=2, dev=""), after=steps)
    state = load_last(tmp_path)
    assert (state.epoch, state.step) == (0, steps) and metrics(tmp_path) == []
    res = cli(*train_args(fast_shards, tmp_path, "--epochs", "2", "--dev", "", "--resume", "--seed", "9",
                          "--max-frames", "3000"))
    assert "keeping the checkpoint's seed, max_frames" in res.output
    assert f"resumed at epoch 1, step {steps}" in res.output
    state = load_last(tmp_path)
    assert state.config["seed"] == 0 and state.config["max_frames"] == MAX_FRAMES
    assert (state.epoch, state.step, state.global_step) == (2, 0, 2 * steps)
    rows = metrics(tmp_path)
    assert [(r["epoch"], r["step"], r["utterances"]) for r in rows] == [(1, steps, N_TRAIN), (2, 2 * steps, N_TRAIN)]


def test_stop_hook_checkpoints_like_ctrl_c(fast_shards, tmp_path):
    """The on_step seam: asked to stop, the run writes last.pt at that step and returns
    {"stopped": True} without a signal (the command would exit 0, not 130)."""
    from training.train import train
    seen = []

    def on_step(state):
        seen.append((state.epoch, state.step, state.global_step))
        return state.global_step == 3
    outcome = train(train_config(fast_shards, tmp_path, epochs=2, dev=""), log=lambda m: None, on_step=on_step)
    assert outcome == {"stopped": True, "signal": False, "epoch": 0, "step": 3}
    assert seen == [(0, 1, 1), (0, 2, 2), (0, 3, 3)]
    state = load_last(tmp_path)
    assert (state.epoch, state.step, state.global_step) == (0, 3, 3) and state.rank_steps == [3]


# ---------------------------------------------------------------------------- 9. config file

def test_config_file_and_cli_override(fast_shards, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "epochs: 1\n"
        "max-frames: 2000\n"          # dashes are accepted, as on the command line
        "seed: 3\n"
        "lr: 0.001\n"
        "dev: ''\n"
        "train_splits: train-clean-100\n"
        "model:\n"
        "  lstm_hidden: 48\n"
        "checkpoint_every: 7\n"
    )
    w, r = tmp_path / "weights", tmp_path / "results"
    # Explicit flags win over the recipe, even when they equal the built-in default (--seed 0).
    res = cli("train", "--config", recipe, "--shards", fast_shards, "--weights", w, "--results", r,
              "--preset", "model1", "--workers", "0", "--quiet", "--lr", "0.003", "--seed", "0",
              "--set", "lstm_layers=2")
    cfg = json.loads((w / "config.json").read_text())
    t = cfg["train"]
    assert t["lr"] == 0.003 and t["seed"] == 0                  # CLI overrides
    assert t["epochs"] == 1 and t["max_frames"] == 2000 and t["dev"] == "" and t["checkpoint_every"] == 7
    assert t["train"] == TRAIN and t["preset"] == "model1" and t["workers"] == 0 and t["progress"] is False
    # --set overrides one model setting; the recipe's other model settings stay.
    assert t["model"] == {"lstm_hidden": 48, "lstm_layers": 2}
    assert cfg["model"]["lstm_hidden"] == 48 and cfg["model"]["lstm_layers"] == 2
    assert "BiLSTM 2x48/dir" in res.output
    assert load_last(tmp_path).config == t
    steps = plan(fast_shards, max_frames=2000).steps
    assert len(metrics(tmp_path)) == 1 and metrics(tmp_path)[0]["step"] == steps


def test_config_file_unknown_key(fast_shards, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("epochs: 1\nlearning_rate: 0.1\n")
    res = cli("train", "--config", recipe, "--shards", fast_shards, "--weights", tmp_path / "w", "--quiet", ok=False)
    assert res.exit_code != 0 and "learning_rate" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------- 10. SIGINT

@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_checkpoints_mid_epoch_and_resumes(fast_shards, tmp_path, sig):
    max_frames = 400                       # about one utterance per batch: many steps per epoch
    steps = plan(fast_shards, max_frames=max_frames).steps
    assert steps >= 40
    args = train_args(fast_shards, tmp_path, "--dev", "", "--checkpoint-every", "3", max_frames=max_frames)
    proc = popen([*args, "--epochs", "50"])
    try:
        wait_for_checkpoint(tmp_path / "weights", proc, reached=3)   # the first mid-epoch checkpoint: under way
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 130, err   # interrupted, checkpoint written
    assert "Traceback" not in err
    state = load_last(tmp_path)
    epoch, stopped = state.epoch, state.step
    # Normally epoch 0, a few steps after 3; on a very busy machine possibly a later epoch, but
    # always inside one (the epoch-end checkpoint has step 0).
    assert 0 < stopped <= steps and epoch < 50 and (epoch, stopped) >= (0, 3), (epoch, stopped, steps)
    assert state.global_step == epoch * steps + stopped
    assert f"stopped at epoch {epoch + 1}, step {stopped}" in err
    assert len(metrics(tmp_path)) == epoch

    # --resume finishes that epoch (--epochs is not pinned: stop after this one).
    res = cli(*args, "--epochs", epoch + 1, "--resume")
    assert f"resumed at epoch {epoch + 1}, step {stopped}" in res.output
    rows = metrics(tmp_path)
    assert len(rows) == epoch + 1 and rows[-1]["step"] == (epoch + 1) * steps
    assert rows[-1]["utterances"] == N_TRAIN        # the interrupted run's accumulators carried over
    state = load_last(tmp_path)
    assert (state.epoch, state.step, state.global_step) == (epoch + 1, 0, (epoch + 1) * steps)
