"""What a new user meets first: a log that says where the run is, one line for each early mistake,
outputs that do not overwrite each other, results a person can read, and a library that leaves a
notebook's matplotlib alone."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.helpers import DEV, TEST, assert_one_line_error, cli, metrics, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished(fast, tmp_path_factory):
    """A 2-epoch model1 run on the `fast` corpus (read-only: copy it to change it)."""
    _, shards = fast
    run = tmp_path_factory.mktemp("finished")
    out = cli(*train_args(shards, run, "--epochs", "2")).output
    (run / "train.log").write_text(out)
    return run


def test_the_epoch_line_says_where_the_run_is(finished):
    log = (finished / "train.log").read_text()
    first = re.search(r"epoch 1/2 in ([\d.]+) min, about ([\d.]+) min left: .*dev distance [\d.]+ \(PER ([\d.]+)%\), "
                      r"averaged weights [\d.]+ \(PER [\d.]+%\)", log)
    assert first, log
    assert float(first.group(3)) == pytest.approx(100 * metrics(finished)[0]["dev_per"], abs=0.01)
    assert re.search(r"epoch 2/2 in [\d.]+ min: ", log)             # the last epoch: nothing left


def test_resuming_a_finished_run_says_so(fast, finished, tmp_path):
    _, shards = fast
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    out = cli(*train_args(shards, run, "--epochs", "2", "--resume")).output
    assert "nothing to train" in out and "larger --epochs" in out
    out = cli(*train_args(shards, run, "--epochs", "3", "--resume")).output
    assert "warning: the cosine schedule of this finished run ended at epoch 2" in out
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]          # counted from 1, as the log counts


def test_resume_with_a_mistyped_folder_is_one_line(fast, tmp_path):
    _, shards = fast
    res = cli("train", "--shards", shards, "--weights", tmp_path / "wieghts", "--results", tmp_path / "r", "--resume",
              "--workers", "0", "--quiet", ok=False)
    assert_one_line_error(res, "wieghts", "a typo?")
    assert not (tmp_path / "wieghts").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_one_line(fast, tmp_path):
    _, shards = fast
    assert_one_line_error(cli(*train_args(shards, tmp_path, "--device", "cuda"), ok=False),
                          "--device cuda", "CUDA is not available")
    res = cli(*train_args(shards, tmp_path, "--device", "gpu"), ok=False)
    assert res.exit_code == 2 and "'gpu' is not one of" in res.output


def test_typos_get_a_hint(fast, tmp_path):
    data, shards = fast
    assert_one_line_error(cli("evaluate", "--shards", shards, "--split", "dev-claen", ok=False), "did you mean 'dev-clean'")
    assert_one_line_error(cli("shards", "--data", data / DEV, "--shards", tmp_path / "s", ok=False),
                          "is a split folder", f"--data {data.resolve()}")


def test_another_output_keeps_its_own_predictions(fast, finished, tmp_path):
    _, shards = fast
    args = ["predict", "--shards", shards, "--weights", finished / "weights", "--results", tmp_path, "--beam-width",
            "2", "--workers", "0", "--quiet"]
    cli(*args)
    default = (tmp_path / f"predict-{TEST}.tsv").read_text()
    cli(*args, "--output", "greedy.csv", "--beam-width", "0")
    assert (tmp_path / f"predict-{TEST}.tsv").read_text() == default                # not overwritten
    assert (tmp_path / f"greedy.predict-{TEST}.tsv").is_file()
    made = json.loads((tmp_path / f"greedy.predict-{TEST}.json").read_text())
    assert made["beam_width"] == 0 and made["submission"].endswith("greedy.csv")


def test_help_lists_each_command_once_in_stage_order():
    out = cli("--help").output
    names = re.findall(r"^  (\S+)  ", out.split("Commands:")[1], flags=re.M)
    assert names == ["synth-corpus", "synth-speech", "shards", "publish", "train", "sweep", "predict", "evaluate",
                     "transcribe", "lm", "summary"]


def test_the_library_leaves_matplotlib_and_reprs_alone(fast, finished, tmp_path):
    """Plots are drawn without pyplot (a notebook's backend is kept) and a manifest prints one line."""
    import matplotlib
    from pipeline import manifest as mf
    from training import metrics as tm
    _, shards = fast
    before = matplotlib.get_backend()
    matplotlib.use("svg")                 # what a notebook would have (inline); any non-Agg backend shows it
    try:
        shutil.copytree(finished / "results", tmp_path / "r")
        assert tm.plot(tmp_path / "r").read_bytes()[:4] == b"\x89PNG"
        cli("evaluate", "--shards", shards, "--weights", finished / "weights", "--results", tmp_path / "e",
            "--beam-width", "2", "--workers", "0", "--quiet")
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)
    m = mf.load(shards, TEST)
    assert len(repr(m)) < 300 and "utterances=" in repr(m) and "\n" not in repr(m)


@pytest.mark.slow
def test_a_failing_rank_s_error_is_the_last_line(tmp_path):
    """`make train NGPU=2` with a mistake: torchrun's own report comes first, the rank's one line last."""
    import subprocess
    import sys
    from tests.helpers import ROOT, subprocess_env
    proc = subprocess.run([sys.executable, "-m", "phonerec.launch", "--standalone", "--nproc_per_node=2",
                           "--monitor-interval=0.2", "-m", "phonerec", "train", "--shards", tmp_path / "none",
                           "--weights", tmp_path / "w", "--results", tmp_path / "r", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=240)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and lines[-1].startswith("Error: ") and "manifest" in lines[-1], proc.stderr[-3000:]
    assert "ChildFailedError" in proc.stderr                       # torchrun's report is still there, above it


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "lm", "shards"])
def test_help_puts_the_url_options_in_their_own_section(command):
    out = cli(command, "--help").output
    head, url = out.split("\nShards at a URL:\n")
    flags = lambda text: set(re.findall(r"^  (--[a-z-]+)", text, flags=re.M))     # noqa: E731
    assert "--shards" in flags(head) and not flags(head) & {"--fetch-retries", "--expect-digest", "--shard-cache"}
    assert {"--fetch-retries", "--expect-digest"} <= flags(url) and "--shards" not in flags(url)


def test_evaluate_json_on_request_and_arpabet_beside_the_codes(fast, finished, tmp_path):
    import csv
    _, shards = fast
    out = cli("evaluate", "--shards", shards, "--weights", finished / "weights", "--results", tmp_path,
              "--beam-width", "2", "--workers", "0", "--quiet", "--json").output
    figures = json.loads(out)                               # the whole output is the JSON, nothing else
    assert figures == json.loads((tmp_path / f"evaluate-{DEV}.json").read_text())
    with open(tmp_path / f"evaluate-{DEV}.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == figures["utterances"]
    from pipeline.vocab import F22
    assert all(len(r["reference_arpabet"].split()) == len(r["reference"]) and
               set(r["reference_arpabet"].split()) <= set(F22.symbols) for r in rows)


def test_make_passes_only_what_was_set_and_runs_one_process_itself():
    """`make train ARGS=--config recipe.yaml` must not override the recipe's epochs; one process runs
    phonerec itself (its one-line error last), several go through torchrun."""
    import os
    import subprocess
    from tests.helpers import ROOT
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}

    def dry(*args):
        out = subprocess.run(["make", "-n", "-C", str(ROOT), *args, "BIN=/nonexistent/bin"], capture_output=True,
                             text=True, env=env, check=True).stdout
        return [line for line in out.splitlines() if " train " in line or " predict " in line][-1]
    plain = dry("train", "ARGS=--config r.yaml")
    assert "--epochs" not in plain and plain.startswith("/nonexistent/bin/phonerec train") and "torchrun" not in plain
    assert '--epochs "3"' in dry("train", "EPOCHS=3")
    assert "phonerec.launch" in dry("train", "NGPU=2") and "--nproc_per_node=\"2\"" in dry("train", "NGPU=2")
    assert "phonerec.launch" in dry("predict", "TORCHRUN_ARGS=--nnodes=2 --node_rank=0")   # several machines
