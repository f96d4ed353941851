"""`phonerec sweep`: trials as `train` subprocesses on the `fast` corpus (seconds each), pruned,
failed and interrupted ones recorded, a study continued, the space checked before any trial,
the best recipe trained again, and a study shared by two workers on a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, cli, finish, popen, train_args

optuna = pytest.importorskip("optuna", reason="phonerec sweep needs Optuna: pip install -e '.[sweep]'")

SPACE = """\
lr: {type: float, low: 0.000001, high: 0.01, log: true}
max_frames: {type: categorical, choices: [1600, 100]}
epochs: {type: categorical, choices: [2, 30]}
lstm_hidden: {type: int, low: 16, high: 32}
"""


@pytest.fixture(autouse=True)
def _one_thread_per_trial(monkeypatch, one_thread):
    """Trials (and the retraining) use one intra-op thread: on a busy 2-core machine two slow them
    down three-fold."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sweep_args(shards, tmp: Path, *extra, space: str = SPACE) -> list:
    """`phonerec sweep` of model1 trials on `shards` into tmp/weights and tmp/results; the median
    pruner may prune from the first epoch once one trial is complete."""
    (tmp / "space.yaml").write_text(space)
    base = train_args(shards, tmp)[1:]                 # train's options, without the command's name
    return ["sweep", "--space", tmp / "space.yaml", "--study", "s", "--startup-trials", "1", "--warmup-epochs", "0",
            *base, *extra]


def enqueue(results: Path, *trials: dict, storage: str | None = None) -> None:
    """The next trials' values, in order (Optuna's queue: the sweep takes these before sampling)."""
    results.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="s", storage=storage or f"sqlite:///{results / 'sweep.db'}",
                                load_if_exists=True, direction="minimize")
    for params in trials:
        study.enqueue_trial(params)


def table(results: Path) -> list[dict]:
    return json.loads((results / "s" / "trials.json").read_text())


def test_a_sweep_prunes_records_a_failure_continues_and_its_best_recipe_trains(fast, tmp_path):
    _, shards = fast
    results = tmp_path / "results"
    good = {"lr": 0.01, "max_frames": 1600, "epochs": 2, "lstm_hidden": 32}
    # max_frames 100 is within the option's range but below the longest utterance: train refuses it
    enqueue(results, good, {**good, "max_frames": 100},
            {"lr": 0.000001, "max_frames": 1600, "epochs": 30, "lstm_hidden": 16})
    first = cli(*sweep_args(shards, tmp_path, "--trials", "2"))
    assert [r["state"] for r in table(results)] == ["complete", "failed"], first.output
    assert "--max-frames 100" in table(results)[1]["error"]
    again = cli(*sweep_args(shards, tmp_path, "--trials", "3"))     # the same study, one more trial
    rows = table(results)
    assert [(r["number"], r["state"]) for r in rows] == [(0, "complete"), (1, "failed"), (2, "pruned")], again.output
    # epoch 1: blank collapse (PER 1.0) beats the untrained model's insertions; pruned long before epoch 30
    assert rows[0]["dev_per"] <= 1.0 + 1e-9 and rows[0]["epochs"] == 2
    assert rows[2]["dev_per_by_epoch"][0] > 2 and rows[2]["epochs"] < 30
    assert (tmp_path / "weights" / "s" / "trial-0002" / "last.pt").is_file()      # stopped with its checkpoint
    tsv = (results / "s" / "trials.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:5] == ["number", "state", "dev_per", "epochs", "minutes"] and len(tsv) == 4
    for name in ("history", "parallel", "importances"):
        path = results / "s" / f"{name}.png"
        assert name == "importances" or path.read_bytes()[:4] == b"\x89PNG"
    best = results / "s" / "best.yaml"
    assert "trial 0 of 3" in best.read_text()
    recipe = __import__("yaml").safe_load(best.read_text())
    assert recipe["lr"] == 0.01 and recipe["model"] == {"lstm_hidden": 32} and "weights" not in recipe
    retrain = tmp_path / "retrain"
    cli("train", "--config", best, "--shards", shards, "--weights", retrain / "w", "--results", retrain / "r",
        "--quiet", "--max-steps", "2", "--epochs", "1", "--no-tune-decoding")
    saved = json.loads((retrain / "w" / "config.json").read_text())
    assert saved["model"]["lstm_hidden"] == 32 and saved["train"]["lr"] == 0.01


def test_a_new_study_first_trains_the_base_recipe_to_compare_the_winner_with(fast, tmp_path):
    _, shards = fast
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    space = "lr: {type: float, low: 0.0001, high: 0.01, log: true}\nlstm_hidden: {type: categorical, choices: [16, 128]}\n"
    dry = cli(*sweep_args(shards, tmp_path / "in", "--epochs", "1", "--dry-run", space=space))
    assert "a new study's first trial: the base recipe" in dry.output
    res = cli(*sweep_args(shards, tmp_path / "in", "--trials", "2", "--epochs", "1", space=space))
    rows = table(tmp_path / "in" / "results")
    assert rows[0]["params"] == {"lr": 0.002, "lstm_hidden": 128} and rows[0]["base_recipe"], res.output   # model1's
    assert not rows[1]["base_recipe"] and rows[1]["params"] != rows[0]["params"]
    best = (tmp_path / "in" / "results" / "s" / "best.yaml").read_text()
    assert "no sampled recipe beat it" in best or f"the base recipe (trial 0, the same budget): dev PER " \
        f"{100 * rows[0]['dev_per']:.2f} %" in best
    # a base value outside the space (model1's 128 hidden units): said, and every trial sampled
    out = cli(*sweep_args(shards, tmp_path / "out", "--trials", "1", "--epochs", "2"))
    assert "the base recipe is not a point of the space (its lstm_hidden 128 is outside the space's [16, 32])" \
        in out.output
    assert not table(tmp_path / "out" / "results")[0]["base_recipe"]


def test_the_space_is_checked_before_any_trial(fast, tmp_path):
    _, shards = fast
    space = """\
lr: {type: float, low: 0, high: 0.01}
warmup: {type: float, low: 0.1, high: 2}
lstm_layers: {type: float, low: 1, high: 3}
lstm_dropout: {type: float, low: 0.1, high: 1.0}
learning_rate: {type: float, low: 0.1, high: 0.2}
shards: {type: categorical, choices: [a, b]}
scheduler: {type: categorical, choices: [cosine, linear]}
weight_decay: {type: float, low: 0, high: 0.1, log: true}
epochs: {type: categorical, choices: [2, 2.5]}
"""
    res = cli(*sweep_args(shards, tmp_path, space=space), ok=False)
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    keys = ["lr", "warmup", "lstm_layers", "lstm_dropout", "learning_rate", "shards", "scheduler", "weight_decay",
            "epochs"]
    assert len(errors) == len(keys), res.output
    for key, line in zip(keys, errors):
        assert f"space.yaml: {key}: " in line, line
    assert "not above 0" in errors[0] and "above 1" in errors[1] and "whole numbers" in errors[2]
    assert "lstm_dropout must be in [0, 1)" in errors[3] and "linear" in errors[6] and "log range" in errors[7]
    assert "2.5 is not of the option's type (int)" in errors[8]
    assert not (tmp_path / "results" / "sweep.db").exists()            # nothing ran
    (tmp_path / "bad.yaml").write_text("lr: [unclosed\n")
    args = sweep_args(shards, tmp_path)
    args[args.index("--space") + 1] = tmp_path / "bad.yaml"
    assert_one_line_error(cli(*args, ok=False), "bad.yaml", "cannot read the search space")


@pytest.mark.parametrize("flag, value", [("--study", "a/b"), ("--devices", "gpu0"), ("--trials", "0")])
def test_sweep_usage_errors(fast, tmp_path, flag, value):
    _, shards = fast
    res = cli(*sweep_args(shards, tmp_path, flag, value), ok=False)
    assert res.exit_code == 2 and "Traceback" not in res.output and flag in res.output, res.output


def test_a_storage_that_cannot_be_opened_is_one_line_without_its_password(fast, tmp_path):
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (pip install -e '.[sweep]')")
    _, shards = fast
    with socket.socket() as s:                       # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = cli(*sweep_args(shards, tmp_path, "--storage", f"postgresql://me:s3cret@127.0.0.1:{port}/db"), ok=False)
    line = assert_one_line_error(res, "--storage", "cannot open the study")
    assert "s3cret" not in res.output and "://***@" in line      # every error line goes through remote.redact


@pytest.mark.slow
def test_ctrl_c_stops_the_trial_with_its_checkpoint_and_the_rerun_continues(fast, tmp_path):
    from training.checkpoint import Checkpoint
    _, shards = fast
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    space = "lr: {type: float, low: 0.001, high: 0.01, log: true}\n"
    proc = popen(sweep_args(shards, tmp_path, "--trials", "1", "--epochs", "30", space=space))
    metrics = tmp_path / "results" / "s" / "trial-0000" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    done = finish(proc, timeout=180)
    assert done.returncode == 130, done.stderr[-2000:]
    row = table(tmp_path / "results")[0]
    assert row["state"] == "interrupted" and "Ctrl-C" in row["error"] and 1 <= row["epochs"] < 30
    last = Checkpoint.load(tmp_path / "weights" / "s" / "trial-0000" / "last.pt")
    assert last.epoch >= 1 or last.step > 0
    cli(*sweep_args(shards, tmp_path, "--trials", "1", "--epochs", "1", space=space))
    assert [(r["number"], r["state"]) for r in table(tmp_path / "results")] == [(0, "interrupted"), (1, "complete")]


# ------------------------------------------------------------------------------- PostgreSQL

def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


@pytest.fixture
def postgres():
    """A PostgreSQL server on 127.0.0.1 for this test (as an unprivileged user where we are root:
    the server refuses to run as root); yields its URL."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (pip install -e '.[sweep]')")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql; `make test` installs it as root)")
    user = {}
    if os.geteuid() == 0:
        import pwd
        try:
            pw = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and there is no user `nobody` to run PostgreSQL as")
        user = {"user": pw.pw_uid, "group": pw.pw_gid}
    root = Path(tempfile.mkdtemp(prefix="phonerec-pg-"))
    if user:
        os.chown(root, user["user"], user["group"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"

    def run(*cmd):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=120, cwd=root, **user)
    try:
        run(bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync")
        run(bin_dir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL would not start here: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], check=False, capture_output=True,
                       timeout=120, cwd=root, **user)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_study_on_postgresql(fast, tmp_path, postgres):
    _, shards = fast
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    space = "lr: {type: float, low: 0.001, high: 0.01, log: true}\nlstm_hidden: {type: int, low: 16, high: 32}\n"
    cli(*sweep_args(shards, tmp_path, "--storage", postgres, "--devices", "cpu,cpu", "--trials", "3", "--epochs", "1",
                    space=space))
    rows = table(tmp_path / "results")
    assert sorted(r["number"] for r in rows) == [0, 1, 2] and {r["state"] for r in rows} == {"complete"}
    assert not (tmp_path / "results" / "sweep.db").exists()         # everything went to the server
    study = optuna.load_study(study_name="s", storage=postgres)
    assert len(study.trials) == 3 and study.best_value == min(r["dev_per"] for r in rows)
    assert {r["worker"].rsplit(":", 1)[1] for r in rows} == {"cpu"}
    assert (tmp_path / "results" / "s" / "best.yaml").is_file()


@pytest.mark.parametrize("space, recipe", [("sweep-cpu.yaml", "demo.yaml"), ("sweep-gpu.yaml", "demo-gpu.yaml")])
def test_the_shipped_spaces_fit_their_recipes(tmp_path, space, recipe):
    from tests.helpers import ROOT
    out = cli("sweep", "--space", ROOT / "configs" / space, "--study", "x", "--config", ROOT / "configs" / recipe,
              "--dry-run", "--weights", tmp_path / "w", "--results", tmp_path / "r").output
    assert "lr (option): float in" in out and "lstm_hidden (model setting): one of" in out
    assert not (tmp_path / "r").exists()                  # a dry run writes nothing


def test_a_trial_s_error_and_its_growing_metrics_are_read_as_they_are(tmp_path):
    """What a killed trial's row says, and a metrics.jsonl read while its last line is being written."""
    from sweep.trial import child_env, epoch_pers, error_of
    log = tmp_path / "train.log"
    log.write_text("epoch 1/30 ...\n")
    assert error_of(-9, log) == "killed by SIGKILL (out of memory?)"
    assert error_of(1, log) == "exit status 1: epoch 1/30 ..."
    log.write_text("Traceback ...\nError: split x: the longest utterance has 298 frames\n")
    assert error_of(1, log) == "split x: the longest utterance has 298 frames"
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": 1, "dev_per": 0.5, "dev_per_averaged": 0.4, "planned_epochs": 3}),
             json.dumps({"epoch": 2, "dev_per": 0.3, "dev_per_averaged": None, "planned_epochs": 3})]
    metrics.write_text(lines[0] + "\n" + lines[1][:20])            # the second line half written
    assert epoch_pers(metrics) == ({1: 0.4}, 3)                   # the better weights' PER, per epoch
    metrics.write_text(lines[0] + "\n" + lines[1] + "\n")
    assert epoch_pers(metrics) == ({1: 0.4, 2: 0.3}, 3)
    assert child_env("2", 1)["CUDA_VISIBLE_DEVICES"] == "2" and child_env("cpu", 1)["CUDA_VISIBLE_DEVICES"] == ""


def test_an_unwritable_study_folder_is_one_line_before_any_trial(fast, tmp_path):
    _, shards = fast
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "s").write_text("a file where the study's folder goes")
    assert_one_line_error(cli(*sweep_args(shards, tmp_path), ok=False), "cannot write to the folder")
    assert not (tmp_path / "results" / "sweep.db").exists()


def test_an_error_of_the_sweep_itself_stops_it_in_one_line_and_leaves_no_trial_running(fast, tmp_path,
                                                                                      monkeypatch):
    import sweep.study
    from pipeline.errors import PhonerecError

    def full_disk(*args, **kwargs):
        raise PhonerecError("no space left on device while writing results/s/trial-0000")
    monkeypatch.setattr(sweep.study, "run_trial", full_disk)
    _, shards = fast
    assert_one_line_error(cli(*sweep_args(shards, tmp_path, "--devices", "cpu,cpu"), ok=False), "no space left")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'results' / 'sweep.db'}")
    assert study.trials and {t.state.name for t in study.trials} == {"FAIL"}


def test_the_history_plot_shows_interrupted_trials_too():
    from sweep.report import plot_history
    rows = [{"number": 0, "state": "complete", "dev_per": 0.3}, {"number": 1, "state": "pruned", "dev_per": 0.9},
            {"number": 2, "state": "interrupted", "dev_per": 0.2}, {"number": 3, "state": "failed", "dev_per": None}]
    ax = plot_history(rows).axes[0]
    assert ax.get_title() == "optimization history (1 complete, 1 pruned, 1 interrupted, 1 failed)"
    assert {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}["interrupted"] == [20.0]
    assert "interrupted" not in plot_history(rows[:2]).axes[0].get_title()      # said only when there is one
