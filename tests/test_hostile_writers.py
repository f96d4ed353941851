"""Outputs that never overwrite each other, one writer per folder, no secret printed: the cases of
the issue "the submission in the course's exact order ..." beyond the recipes (the order itself:
tests/test_submission_order.py).

Each case ends in one line naming the file or option (or the promised behaviour), with nothing
overwritten or deleted.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline import manifest as mf
from tests.conftest import copy_tree
from tests.helpers import DEV, TEST, TRAIN, assert_one_line_error, cli, decode_args, make_weights, train_args

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(fast, tmp_path_factory) -> Path:
    """An untrained model1 best.pt for the `fast` shards (enough to decode); read-only."""
    return make_weights(fast[1], tmp_path_factory.mktemp("writers") / "best.pt")


def hold_lock(folder: Path, text: str = "phonerec train, pid 1234 on elsewhere, started now"):
    """The lock another command holds on `folder` (an open file: close it to release)."""
    folder.mkdir(parents=True, exist_ok=True)
    held = open(folder / ".lock", "a+")     # noqa: SIM115 - the caller closes it
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held.write(text + "\n")
    held.flush()
    return held


# ------------------------------------------------------------------ one writer per folder

@pytest.mark.parametrize("which", ["weights", "results"])
def test_two_trains_into_one_folder_the_second_refused(fast, tmp_path, which):
    held = hold_lock(tmp_path / which)
    try:
        res = cli(*train_args(fast[1], tmp_path, "--epochs", "1", "--dev", ""), ok=False)
    finally:
        held.close()
    assert_one_line_error(res, str(tmp_path / which), "in use by another command", "pid 1234 on elsewhere",
                          "other --weights/--results")
    assert not (tmp_path / "weights" / "last.pt").exists() and not (tmp_path / "results" / "metrics.jsonl").exists()
    cli(*train_args(fast[1], tmp_path, "--epochs", "1", "--dev", ""))         # released: it runs
    assert "phonerec train, pid" in (tmp_path / which / ".lock").read_text()


def test_a_lock_left_by_a_dead_process_is_no_obstacle_and_resume_works(fast, tmp_path):
    for which in ("weights", "results"):          # what a killed run leaves: the file, no lock on it
        (tmp_path / which).mkdir()
        (tmp_path / which / ".lock").write_text(f"phonerec train, pid {2**22 + 7} on here, started then\n")
    cli(*train_args(fast[1], tmp_path, "--epochs", "1", "--dev", ""))
    cli(*train_args(fast[1], tmp_path, "--epochs", "2", "--dev", "", "--resume"))
    assert (tmp_path / "weights" / "last.pt").is_file()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_decoding_command_into_a_results_folder_in_use_is_refused(fast, weights, tmp_path, command):
    held = hold_lock(tmp_path / "results")
    try:
        split = TEST if command == "predict" else DEV
        res = cli(*decode_args(command, fast[1], weights, tmp_path / "results", "--split", split), ok=False)
    finally:
        held.close()
    assert_one_line_error(res, "in use by another command", "pid 1234", "another --results folder")
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [".lock"]


def test_evaluate_tune_into_a_weights_folder_in_use_is_refused(fast, weights, tmp_path):
    """--tune writes decode.json beside the checkpoint: the weights folder is then an output too."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(weights, run / "best.pt")
    held = hold_lock(run)
    try:
        res = cli(*decode_args("evaluate", fast[1], run, tmp_path / "results", "--split", DEV, "--tune",
                               "--beam-width", "4"), ok=False)
        assert_one_line_error(res, "in use by another command", "pid 1234", "--weights")
        assert sorted(p.name for p in run.iterdir()) == [".lock", "best.pt"]
        cli(*decode_args("evaluate", fast[1], run, tmp_path / "results", "--split", DEV))   # reading it: fine
    finally:
        held.close()


# ------------------------------------------------------------------ publish onto its own shards

def manifests_of(shards: Path) -> dict[str, bytes]:
    return {str(p.relative_to(shards)): p.read_bytes() for p in sorted(shards.glob("*/manifest.json"))}


@pytest.mark.parametrize("where", ["itself", "file-url", "inside", "around", "symlink"])
def test_publish_onto_its_own_shards_is_refused_before_anything_is_removed(fast, tmp_path, where):
    shards = copy_tree(fast[1], tmp_path / "shards")
    before = manifests_of(shards)
    (tmp_path / "link").symlink_to(shards)
    to = {"itself": shards, "file-url": f"file://{shards}", "inside": shards / "published", "around": tmp_path,
          "symlink": tmp_path / "link"}[where]
    res = cli("publish", "--shards", shards, "--to", to, "--quiet", ok=False)
    assert_one_line_error(res, f"--to {to}", "the shards folder", "outside it")
    assert manifests_of(shards) == before and len(before) == 3
    assert not (shards / "published").exists()
    assert mf.load(shards, TEST).num_utterances == 6


def test_publish_to_a_file_or_under_one_is_refused_up_front(fast, tmp_path):
    (tmp_path / "afile").write_text("x")
    for to, why in ((tmp_path / "afile", "is a file"), (tmp_path / "afile" / "pub", "cannot write to the folder")):
        res = cli("publish", "--shards", fast[1], "--to", to, "--quiet", ok=False)
        assert_one_line_error(res, str(to), why)
    assert (tmp_path / "afile").read_text() == "x"


# ------------------------------------------------------------------ outputs checked up front

@pytest.mark.parametrize("output, why", [
    ("predict-test-clean.tsv", "another output"), ("x.predict-test-clean.json", "another output"),
    ("metrics.jsonl", "another output"), ("evaluate-dev-clean.tsv", "another output"),
    ("../outside.csv", "not a path"), ("sub/x.csv", "not a path"), ("..", "not a path"), ("", "is empty"),
    (".lock", "hidden"),
])
def test_predict_output_that_is_another_output_or_leaves_results_is_a_usage_error(fast, weights, tmp_path,
                                                                                  output, why):
    res = cli(*decode_args("predict", fast[1], weights, tmp_path / "results", "--output", output), ok=False)
    assert res.exit_code == 2 and "--output" in res.output and why in res.output, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "outside.csv").exists()


def test_predict_output_that_is_an_input_is_refused_before_decoding(fast, weights, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(weights.parent, run)
    before = (run / "best.pt").read_bytes()
    res = cli(*decode_args("predict", fast[1], run, run, "--output", "best.pt"), ok=False)
    assert_one_line_error(res, "--output best.pt", "is an input")
    assert (run / "best.pt").read_bytes() == before
    shards = copy_tree(fast[1], tmp_path / "shards")
    res = cli(*decode_args("predict", shards, weights, shards / TEST, "--output", "manifest.json"), ok=False)
    assert_one_line_error(res, "--output manifest.json", "is an input")
    assert mf.load(shards, TEST).num_utterances == 6


@pytest.mark.parametrize("header, ok", [("id,label", True), ("a", False), ("a,b,c", False), ("a,", False)])
def test_header_must_have_the_submissions_two_columns(fast, weights, tmp_path, header, ok):
    res = cli(*decode_args("predict", fast[1], weights, tmp_path / "results", "--header", header), ok=ok)
    if ok:
        assert (tmp_path / "results" / "submission.csv").read_text().splitlines()[0] == header
    else:
        assert res.exit_code == 2 and "--header" in res.output and "two comma-separated names" in res.output


def test_lm_out_and_transcribe_plot_under_a_file_fail_before_the_work(fast, weights, tmp_path):
    (tmp_path / "afile").write_text("x")
    res = cli("lm", "--shards", fast[1], "--out", tmp_path / "afile" / "lm.arpa", "--quiet", ok=False)
    assert_one_line_error(res, f"cannot write to the folder {tmp_path / 'afile'}")
    npy = tmp_path / "u.npy"
    np.save(npy, np.zeros((40, 15), np.float32))
    res = cli("transcribe", str(npy), "--weights", weights, "--plot", tmp_path / "afile" / "p.png", ok=False)
    assert_one_line_error(res, f"cannot write to the folder {tmp_path / 'afile'}")
    assert "u.npy\t" not in res.output                 # refused before decoding anything


# ------------------------------------------------------------------ credentials in a URL

SECRET = "s3cr3tPW"


def with_login(url: str) -> str:
    return url.replace("://", f"://user:{SECRET}@", 1)


def test_redact_hides_every_userinfo():
    from pipeline.remote import redact
    text = f"cannot read http://u:{SECRET}@h:8/x@y (and s3://KEY:{SECRET}@bucket/k, file:///a@b, s3://bucket/k@2)"
    assert redact(text) == "cannot read http://***@h:8/x@y (and s3://***@bucket/k, file:///a@b, s3://bucket/k@2)"


@pytest.mark.parametrize("command", ["train", "predict", "verify", "lm"])
def test_a_password_in_an_http_url_is_refused_unprinted_and_never_sent(served, weights, tmp_path, command):
    url = with_login(served.url)
    args = {"train": train_args(url, tmp_path, "--epochs", "1"),
            "predict": decode_args("predict", url, weights, tmp_path / "results"),
            "verify": ["shards", "--verify", "--shards", url],
            "lm": ["lm", "--shards", url, "--out", tmp_path / "lm.arpa"]}[command]
    before = sum(served.requests.values())
    res = cli(*args, ok=False)
    assert res.exit_code == 2 and SECRET not in res.output and "Traceback" not in res.output, res.output
    assert "--shards http://***@127.0.0.1" in res.output and "may not hold a user name or password" in res.output
    assert sum(served.requests.values()) == before          # nothing sent: not the password, not a request
    assert not (tmp_path / "weights").exists() and not (tmp_path / "results").exists()


def test_the_library_refuses_a_login_url_without_resolving_it(served):
    from pipeline.remote import FetchError, read_bytes, size
    before = sum(served.requests.values())
    for fn in (lambda: mf.load(with_login(served.url), TRAIN), lambda: size(with_login(served.url) + "/index.json"),
               lambda: read_bytes(with_login("http://no-such-host.invalid") + "/x")):
        with pytest.raises(FetchError) as info:
            fn()
        assert SECRET not in str(info.value) and "***@" in str(info.value)
    assert sum(served.requests.values()) == before


def test_a_redirect_to_a_login_url_is_refused_unprinted(served, weights, tmp_path):
    served.redirect(f"{TEST}/manifest.json", with_login(served.url) + f"/{TEST}/manifest.json", times=1)
    res = cli(*decode_args("predict", served.url, weights, tmp_path / "results"), ok=False)
    assert_one_line_error(res, f"{served.url}/{TEST}/manifest.json")
    assert SECRET not in res.output


@pytest.mark.parametrize("args", [
    ["predict", "--shards", f"s3://AKIAKEY:{SECRET}@bucket/shards", "--quiet"],
    ["publish", "--shards", "SHARDS", "--to", f"s3://AKIAKEY:{SECRET}@bucket/shards", "--quiet"],
    ["train", "--shards", f"gs://tok:{SECRET}@bucket/shards", "--quiet"],
])
def test_a_secret_in_an_object_store_url_says_where_credentials_belong(fast, args):
    args = [str(fast[1]) if a == "SHARDS" else a for a in args]
    res = cli(*args, ok=False)
    assert res.exit_code == 2 and SECRET not in res.output and "Traceback" not in res.output, res.output
    assert ("AWS_ACCESS_KEY_ID" if "s3://" in " ".join(args) else "GOOGLE_APPLICATION_CREDENTIALS") in res.output


# ------------------------------------------------------------------ smaller cases

def test_a_wav_with_a_header_and_no_samples_is_one_line_not_a_phone(weights, tmp_path):
    sf = pytest.importorskip("soundfile")
    pytest.importorskip("librosa")
    empty, good = tmp_path / "empty.wav", tmp_path / "u.npy"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    np.save(good, np.zeros((40, 15), np.float32))
    res = cli("transcribe", str(empty), "--weights", weights, "--beam-width", "0", ok=False)
    assert_one_line_error(res, str(empty), "0 samples", "analysis window")
    assert "empty.wav\t" not in res.output
    res = cli("transcribe", str(empty), str(good), "--weights", weights, "--beam-width", "0", ok=False)
    assert "u.npy\t" in res.output and "empty.wav\t" not in res.output and "1 of 2 file(s)" in res.output


def test_a_test_split_whose_every_file_is_rejected_fails_without_a_submission(pipe, tmp_path):
    from tests.helpers import write_corpus
    write_corpus(pipe, tmp_path / "data", {TRAIN: 12, DEV: 2, TEST: 3})
    for p in (tmp_path / "data" / TEST / "mfcc").glob("*.npy"):
        p.write_bytes(b"not an npy file")
    pipe.build(tmp_path / "data", tmp_path / "shards", min_shards=2)
    assert mf.load(tmp_path / "shards", TEST).inputs == 3
    w = make_weights(tmp_path / "shards", tmp_path / "best.pt")
    res = cli(*decode_args("predict", tmp_path / "shards", w, tmp_path / "results"), ok=False)
    assert_one_line_error(res, f"split {TEST} has no utterances (3 inputs, all rejected: see", "rejected.tsv",
                          "no submission written")
    assert not (tmp_path / "results" / "submission.csv").exists()


@pytest.mark.parametrize("group", [False, True])
def test_sigterm_during_shards_ends_quietly_and_a_rerun_finishes(tmp_path, group):
    import signal
    import time

    from corpora.random import generate
    from tests.helpers import popen
    generate(tmp_path / "data", {TRAIN: 400, DEV: 10, TEST: 10}, seed=3, workers=1, progress=False)
    args = ["shards", "--data", tmp_path / "data", "--shards", tmp_path / "shards", "--workers", "2", "--quiet"]
    proc = popen(args)
    deadline = time.monotonic() + 120
    while not (tmp_path / "shards" / "store").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)                                   # the worker processes are at work
    (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "leaked" not in err and "Error" not in err, err
    assert err.strip().splitlines() == [f"interrupted: {tmp_path / 'shards'} keeps every file already finished; "
                                        "rerun the same command to finish the build"]
    assert cli(*args).exit_code == 0 and mf.load(tmp_path / "shards", TRAIN).num_utterances == 400


def test_under_torchrun_rank_0_alone_takes_the_lock_and_a_held_one_stops_the_job(fast, tmp_path):
    from tests.helpers import torchrun
    held = hold_lock(tmp_path / "weights")
    try:
        res = torchrun(train_args(fast[1], tmp_path, "--epochs", "1", "--dev", ""), ok=False)
    finally:
        held.close()
    assert res.returncode != 0 and "in use by another command (phonerec train, pid 1234" in res.stderr, res.stderr
    assert not (tmp_path / "weights" / "last.pt").exists()
    torchrun(train_args(fast[1], tmp_path, "--epochs", "1", "--dev", ""))      # two ranks, one lock: it runs
    assert (tmp_path / "weights" / "last.pt").is_file()
