"""Fault injection, part 1: bad inputs, damaged shards, full disks, failed checkpoint writes and
non-finite losses. Every failure must end in a clear one-line message naming the file and what to
do, and must never lose or corrupt work that was already done.

(Killed processes are in test_reliability_kill.py.)
"""

from __future__ import annotations

import builtins
import errno
import functools
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from phonerec.cli import main as cli_main
from pipeline import manifest as mf
from pipeline import npyfile, validate
from pipeline.reading import check_shards
from tests import helpers
from tests.helpers import (DEV, FAST_COUNTS, MAX_FRAMES, TEST, TRAIN, assert_one_line_error, cli,
                           flip_feature_byte, load_last, make_weights, metrics, temp_leftovers, train_and_stop,
                           train_config, write_corpus)
from training import checkpoint as ckpt
from training import data as tdata
from training import loop as tloop
from pipeline.reading import ShardReadError
from training.data import make_loader
from training.plan import BatchOptions, plan_epoch

N_TRAIN = FAST_COUNTS[TRAIN]      # training utterances of the `fast` corpus (conftest.py)
LR = 0.003
train_args = functools.partial(helpers.train_args, lr=LR)


# ------------------------------------------------------------------------------------ fixtures

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def shards_copy(pipe, fast, tmp_path) -> Path:
    return pipe.copy_tree(fast[1], tmp_path / "shards")


@pytest.fixture(scope="module")
def weights(fast, tmp_path_factory) -> Path:
    """An untrained model1 checkpoint with the fast shards' statistics (enough to decode)."""
    return make_weights(fast[1], tmp_path_factory.mktemp("rel_weights") / "best.pt")


# ------------------------------------------------------------------ 1. bad input: duplicate ids

def test_duplicate_ids_across_splits_keep_the_first_split(pipe, tmp_path):
    """The same utterance id in train and dev: the dev copy is rejected, naming the split that keeps
    it. A test id that also occurs elsewhere is kept (the submission needs it) and reported."""
    data, shards = tmp_path / "data", tmp_path / "shards"
    write_corpus(pipe, data, {TRAIN: 10, DEV: 4, TEST: 4})
    rng = np.random.default_rng(3)
    syms = ["[SOS]", "AA", "B", "K", "[EOS]"]
    pipe.write_utterance(data, TRAIN, "dup-1", pipe.random_feats(rng, 120), syms)
    pipe.write_utterance(data, DEV, "dup-1", pipe.random_feats(rng, 90), syms)      # a different file
    pipe.write_utterance(data, DEV, "dup-2", pipe.random_feats(rng, 80), syms)
    pipe.write_utterance(data, TEST, "dup-2", pipe.random_feats(rng, 70))
    args = ["shards", "--data", data, "--shards", shards, "--quiet", "--workers", "1", "--min-shards", "2"]
    res = cli(*args)
    assert "1 rejected" in res.output
    assert f"warning: {TEST}: 1 test utterance id(s) also occur in another split, e.g. dup-2; kept" in res.stderr

    [row] = pipe.rejected_rows(shards)
    assert (row["split"], row["utterance"], row["file"]) == (DEV, "dup-1", str(data / DEV / "mfcc" / "dup-1.npy"))
    assert row["reason"].startswith(f"duplicate utterance id: also in split {TRAIN}, which keeps it")
    tm, dm, sm = (mf.load(shards, s) for s in (TRAIN, DEV, TEST))
    assert "dup-1" in tm.ids and "dup-1" not in dm.ids
    assert tm.frames[tm.ids.index("dup-1")] == 120                  # the train copy was kept
    assert "dup-2" in dm.ids and "dup-2" in sm.ids
    assert (dm.num_utterances, dm.rejected, dm.inputs) == (5, 1, 6)
    assert (sm.num_utterances, sm.rejected, sm.inputs) == (5, 0, 5)
    assert "OK" in cli("shards", "--verify", "--data", data, "--shards", shards).output

    # --strict stops at the duplicate, naming the file
    res = cli(*args, "--strict", ok=False)
    assert_one_line_error(res, data / DEV / "mfcc" / "dup-1.npy", "duplicate utterance id")

    # Nothing changed: nothing is rewritten. Then the train copy is deleted: dev now keeps its own.
    before = pipe.mtimes(shards)
    cli(*args)
    assert pipe.mtimes(shards) == before
    (data / TRAIN / "mfcc" / "dup-1.npy").unlink()
    (data / TRAIN / "transcript" / "dup-1.npy").unlink()
    cli(*args)
    assert pipe.rejected_rows(shards) == []
    assert "dup-1" in mf.load(shards, DEV).ids and "dup-1" not in mf.load(shards, TRAIN).ids


def test_duplicate_ids_across_two_training_splits(pipe, tmp_path):
    data = tmp_path / "data"
    write_corpus(pipe, data, {"train-a": 6, "train-b": 6})
    x = pipe.random_feats(np.random.default_rng(1), 100)
    for split in ("train-a", "train-b"):
        pipe.write_utterance(data, split, "same", x, ["[SOS]", "AA", "[EOS]"])
    summary = pipe.build(data, tmp_path / "s", train="train-a,train-b", dev="", test="", min_shards=2)
    assert [(r.split, r.uid) for r in summary.rejections] == [("train-b", "same")]
    # the statistics count the kept copy once
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    frames = sum(mf.load(tmp_path / "s", s).total_frames for s in ("train-a", "train-b"))
    assert stats["count"] == frames


# ------------------------------------------------------------------ 2. bad input: permissions

def test_unreadable_files_are_rejected_with_permission_reason(pipe, tmp_path, monkeypatch):
    """Tests run as root, where chmod does not block reads: the reader's open() raises instead."""
    data = tmp_path / "data"
    write_corpus(pipe, data, {TRAIN: 8, DEV: 4, TEST: 3})
    ids = {s: pipe.raw_ids(data, s) for s in (TRAIN, DEV, TEST)}
    locked = {data / TRAIN / "mfcc" / f"{ids[TRAIN][2]}.npy", data / DEV / "transcript" / f"{ids[DEV][1]}.npy",
              data / TEST / "mfcc" / f"{ids[TEST][0]}.npy"}

    def guarded_open(file, *a, **k):
        if Path(file) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, *a, **k)

    monkeypatch.setattr(npyfile, "open", guarded_open, raising=False)
    summary = pipe.build(data, tmp_path / "shards", min_shards=2)      # workers=1: in this process
    rows = {r["file"]: r for r in pipe.rejected_rows(tmp_path / "shards")}
    assert set(rows) == {str(p) for p in locked}
    for p in locked:
        what = "transcript" if "transcript" in p.parts else "feature"
        assert rows[str(p)]["reason"] == f"{what} file is not readable (permission denied)"
    assert [s.kept for s in summary.splits] == [7, 3, 2] and len(summary.rejections) == 3


def test_unlistable_split_folder_is_one_line(pipe, tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_corpus(pipe, data, {TRAIN: 3})
    from pipeline import layout
    real = os.scandir

    def scandir(path):
        if Path(path).name == "mfcc":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(layout.os, "scandir", scandir)
    res = cli("shards", "--data", data, "--shards", tmp_path / "s", "--dev", "", "--test", "", "--quiet", ok=False)
    assert_one_line_error(res, "cannot list split", "Permission denied", data / TRAIN / "mfcc")


def test_unexpected_reader_exception_is_a_rejection_not_a_crash(pipe, tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_corpus(pipe, data, {TRAIN: 5})
    victim = data / TRAIN / "mfcc" / f"{pipe.raw_ids(data, TRAIN)[1]}.npy"
    real = validate.load_utterance

    def load(mfcc, *a):
        if Path(mfcc) == victim:
            raise RuntimeError("disk controller on fire")
        return real(mfcc, *a)

    from pipeline import store
    monkeypatch.setattr(store, "load_utterance", load)
    pipe.build(data, tmp_path / "s", dev="", test="", min_shards=2)
    [row] = pipe.rejected_rows(tmp_path / "s")
    assert row["file"] == str(victim) and "RuntimeError: disk controller on fire" in row["reason"]


# ------------------------------------------------------------------ 3. bad input: transcribe

def test_transcribe_bad_file_is_one_line_naming_the_file(pipe, fast, weights, tmp_path):
    data, _ = fast
    good = sorted((data / TEST / "mfcc").glob("*.npy"))[:2]
    bad = {"shape": pipe.write_npy(tmp_path / "shape.npy", np.zeros((20, 13), np.float32)),
           "nan": pipe.write_npy(tmp_path / "nan.npy", np.full((20, 15), np.nan, np.float32)),
           "truncated": tmp_path / "trunc.npy", "text": tmp_path / "text.npy"}
    bad["truncated"].write_bytes(good[0].read_bytes()[:300])
    bad["text"].write_text("not numpy\n")
    words = {"shape": "[T, 15]", "nan": "NaN", "truncated": "truncated", "text": "not a .npy"}
    for case, path in bad.items():
        res = CliRunner().invoke(cli_main, ["transcribe", "--weights", str(weights), "--beam-width", "0", str(path)])
        assert_one_line_error(res, f"cannot read features {path}", words[case])
        assert res.output.count("\n") == 1, res.output

    # Several files: the good ones are transcribed, each bad one reported, and the exit status says so.
    files = [good[0], bad["shape"], good[1]]
    res = CliRunner().invoke(cli_main, ["transcribe", "--weights", str(weights), "--beam-width", "0",
                                        *map(str, files)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert [line.split("\t")[0] for line in res.stdout.splitlines()] == [good[0].name, good[1].name]
    assert f"error: cannot read features {bad['shape']}" in res.stderr
    assert "1 of 3 file(s) could not be read" in res.stderr


# ------------------------------------------------------------------ 4. damaged shards, reading

@pytest.mark.parametrize("workers", [0, 2])
def test_flipped_byte_in_feature_data_is_detected(shards_copy, workers):
    m = mf.load(shards_copy, TRAIN)
    plan = plan_epoch(m, seed=0, epoch=0, workers=workers, opts=BatchOptions(max_frames=MAX_FRAMES))
    victim_no = plan.windows[-1][-1].shards[-1]
    victim = flip_feature_byte(m, victim_no)
    # The damage is invisible to a plain reader: same keys, same shapes, different numbers.
    import webdataset as wds
    keys = [s["__key__"] for s in wds.WebDataset(str(victim), shardshuffle=False, nodesplitter=None,
                                                 workersplitter=None, empty_check=False)]
    assert keys == m.keys[m.shard_start[victim_no]:m.shard_start[victim_no + 1]]

    it = iter(make_loader(m, plan))
    got = 0
    with pytest.raises(ShardReadError) as err:
        for _ in it:
            got += 1
    msg = str(err.value)
    assert got > 0                                                  # found while reading, in order
    assert str(victim) in msg and "crc32 differs" in msg and "phonerec shards --verify" in msg
    assert "\n" not in msg and "Traceback" not in msg               # one line, also from a worker


def test_manifest_of_another_build_is_detected(pipe, fast, shards_copy, tmp_path):
    """A manifest that does not match its shards (here: of a build cut into 5 shards, not 6)."""
    data, _ = fast
    other = tmp_path / "other"
    pipe.build(data, other, min_shards=5, dev="", test="")
    shutil.copyfile(other / TRAIN / "manifest.json", shards_copy / TRAIN / "manifest.json")
    m = mf.load(shards_copy, TRAIN)
    bad = [s for s, why in check_shards(m, full=True)]
    assert bad == list(range(5))
    for s in bad:
        with pytest.raises(ShardReadError, match="crc32 differs|bytes, the manifest says"):
            tdata.read_shards(m, [s])


def test_member_check_still_applies_behind_the_checksum(shards_copy):
    """A shard missing one member, with a manifest whose size and checksums were updated to match:
    the per-sample check against the manifest still names the shard."""
    m = mf.load(shards_copy, TRAIN)
    path = m.shard_paths()[0]
    with tarfile.open(path) as tar:
        members = [(ti, tar.extractfile(ti).read()) for ti in tar.getmembers()]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for ti, blob in members:
            if ti.name != f"{m.keys[0]}.labels.npy":
                tar.addfile(ti, io.BytesIO(blob))
    m.shards[0].bytes = path.stat().st_size
    m.shards[0].sha256 = pipe_sha(path)
    m.shards[0].crc32 = zlib.crc32(path.read_bytes())
    with pytest.raises(ShardReadError, match=f"{re.escape(str(path))}.*{m.keys[0]}.*does not match the manifest"):
        tdata.read_shards(m, [0])


def test_manifest_without_crc32_checks_sha256(shards_copy):
    """Manifests written before the crc32 column: the loader falls back to sha256."""
    m = mf.load(shards_copy, TRAIN)
    assert all(isinstance(info.crc32, int) for info in m.shards)
    for info in m.shards:
        info.crc32 = None
    assert len(tdata.read_shards(m, [0])) == m.shards[0].utterances
    path = m.shard_paths()[0]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match="sha256 differs from the manifest"):
        tdata.read_shards(m, [0])


def pipe_sha(path) -> str:
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------ 5. damaged shards, training

def test_damaged_shard_mid_epoch_stops_with_checkpoint_then_skip_resumes(shards_copy, tmp_path):
    m = mf.load(shards_copy, TRAIN)
    plan = plan_epoch(m, seed=0, epoch=0, workers=0, opts=BatchOptions(max_frames=MAX_FRAMES))
    victim_no = plan.windows[0][-1].shards[-1]                   # read last in epoch 1
    victim = flip_feature_byte(m, victim_no)
    first_window_batches = sum(len(w.batches) for w in plan.windows[0][:-1])

    res = cli(*train_args(shards_copy, tmp_path, "--epochs", "2", "--dev", ""), ok=False)
    line = assert_one_line_error(res, victim, "crc32 differs", "phonerec shards --verify", "--skip-bad-shards",
                                 f"checkpoint written at epoch 1, step {first_window_batches}")
    assert "--resume" in line
    state = load_last(tmp_path)                                     # no work lost: the steps done are saved
    assert (state.epoch, state.step) == (0, first_window_batches) and first_window_batches > 0

    res = cli(*train_args(shards_copy, tmp_path, "--epochs", "2", "--dev", "", "--resume", "--skip-bad-shards"))
    assert f"skipping 1 damaged train shard(s) with {m.shards[victim_no].utterances} of {N_TRAIN}" in res.output
    assert "the epoch plan changes" in res.output
    rows = metrics(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["skipped_shards"] == [f"{TRAIN}/{victim.name}"] for r in rows)
    assert rows[1]["utterances"] == N_TRAIN - m.shards[victim_no].utterances
    state = load_last(tmp_path)
    assert [s["shard"] for s in state.skipped_shards] == [f"{TRAIN}/{victim.name}"]


def test_skip_bad_shards_reports_exactly_what_was_left_out(shards_copy, tmp_path):
    tm, dm = mf.load(shards_copy, TRAIN), mf.load(shards_copy, DEV)
    bad_train = flip_feature_byte(tm, 2)
    tm.shard_paths()[4].unlink()
    bad_dev = flip_feature_byte(dm, 1)
    lost = [tm.ids[r] for s in (2, 4) for r in range(tm.shard_start[s], tm.shard_start[s + 1])]

    # Without the flag a missing shard stops the run before any step, listing the damage found.
    res = cli(*train_args(shards_copy, tmp_path / "a", "--epochs", "1"), ok=False)
    assert_one_line_error(res, "damaged shard(s)", f"{TRAIN}/{tm.shards[4].name}: missing", "--skip-bad-shards")
    assert not (tmp_path / "a" / "weights" / "last.pt").exists()

    res = cli(*train_args(shards_copy, tmp_path / "b", "--epochs", "1", "--skip-bad-shards"))
    assert f"skipping 2 damaged train shard(s) with {len(lost)} of {N_TRAIN} utterances" in res.output
    assert f"{TRAIN}/{bad_train.name}: sha256 differs" in res.output
    assert f"{TRAIN}/{tm.shards[4].name}: missing" in res.output
    assert f"skipping 1 damaged dev shard(s) with {dm.shards[1].utterances} of {dm.num_utterances}" in res.output
    [row] = metrics(tmp_path / "b")
    assert sorted(row["skipped_shards"]) == sorted([f"{TRAIN}/{bad_train.name}", f"{TRAIN}/{tm.shards[4].name}",
                                                    f"{DEV}/{bad_dev.name}"])
    assert row["skipped_utterances"] == len(lost) and row["skipped_dev_utterances"] == dm.shards[1].utterances
    assert row["utterances"] == N_TRAIN - len(lost) and row["dropped_utterances"] == 0
    state = load_last(tmp_path / "b")
    assert sorted(i for s in state.skipped_shards if s["role"] == "train" for i in s["ids"]) == sorted(lost)


# ------------------------------------------------------------------ 6. damaged shards, prediction

def test_predict_with_damaged_test_shard_writes_nothing(pipe, shards_copy, weights, tmp_path):
    out = tmp_path / "results"
    cli("predict", "--shards", shards_copy, "--weights", weights, "--results", out, "--beam-width", "0",
        "--workers", "0", "--quiet")
    good = (out / "submission.csv").read_bytes()
    assert good.count(b"\n") == 1 + 6

    m = mf.load(shards_copy, TEST)
    victim = flip_feature_byte(m, 2)
    for workers in ("0", "2"):
        res = cli("predict", "--shards", shards_copy, "--weights", weights, "--results", out, "--beam-width", "0",
                  "--workers", workers, "--quiet", ok=False)
        assert_one_line_error(res, victim, "crc32 differs", "nothing was written")
        assert (out / "submission.csv").read_bytes() == good           # the previous file is untouched
    res = cli("predict", "--shards", shards_copy, "--weights", weights, "--results", tmp_path / "new",
              "--beam-width", "0", "--workers", "0", "--quiet", ok=False)
    assert not (tmp_path / "new" / "submission.csv").exists()
    victim.unlink()
    res = cli("predict", "--shards", shards_copy, "--weights", weights, "--results", tmp_path / "new",
              "--quiet", ok=False)
    assert_one_line_error(res, f"{TEST}/{victim.name}: missing")
    assert not (tmp_path / "new" / "submission.csv").exists()


def test_submission_rows_refuse_missing_or_extra_rows(fast):
    from training.submission import submission_rows
    m = mf.load(fast[1], TEST)
    hyps = {r: {"beam": [2, 3]} for r in range(m.num_utterances)}
    rows, missing = submission_rows(m, hyps)
    assert [i for i, _ in rows] == list(range(m.inputs)) and missing == []
    with pytest.raises(ShardReadError):
        submission_rows(m, {r: h for r, h in hyps.items() if r})                    # one missing
    m.index = m.index.copy()
    m.index[0] = m.index[1]
    with pytest.raises(ShardReadError, match="repeated or out-of-range"):
        submission_rows(m, hyps)


# ------------------------------------------------------------------ 7. full disk (injected)

def test_disk_full_while_writing_shards_then_rerun(pipe, tiny_corpus, tiny_shards, tmp_path, monkeypatch):
    out = tmp_path / "shards"
    args = ["shards", "--data", tiny_corpus, "--shards", out, "--workers", "1", "--min-shards", "4", "--quiet"]
    written = []
    real_addfile = tarfile.TarFile.addfile
    first_shard = 2 * mf.load(tiny_shards, TRAIN).shards[0].utterances

    def addfile(self, tarinfo, fileobj=None):
        if len(written) >= first_shard + 4:           # in the middle of the second training shard
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(tarinfo.name)
        return real_addfile(self, tarinfo, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", addfile)
    res = cli(*args, ok=False)
    assert_one_line_error(res, "no space left on device while writing", ".tar", "previous version", "intact")
    assert temp_leftovers(out) == []
    clean = pipe.tar_hashes(tiny_shards)
    partial = pipe.tar_hashes(out)
    assert partial and all(clean[k] == v for k, v in partial.items())   # finished shards only, all complete
    monkeypatch.setattr(tarfile.TarFile, "addfile", real_addfile)
    cli(*args)
    assert pipe.tar_hashes(out) == clean
    for split in (TRAIN, DEV, TEST):
        assert (out / split / "manifest.json").read_bytes() == (tiny_shards / split / "manifest.json").read_bytes()


def test_disk_full_while_writing_the_store(pipe, tiny_corpus, tmp_path, monkeypatch):
    import zarr.storage._local as zlocal
    real_put = zlocal._put

    def put(path, value, exclusive=False):
        if "features" in Path(path).parts and Path(path).parent.name != "features":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(path, value, exclusive)

    monkeypatch.setattr(zlocal, "_put", put)
    res = cli("shards", "--data", tiny_corpus, "--shards", tmp_path / "s", "--workers", "1", "--quiet", ok=False)
    assert_one_line_error(res, "no space left on device while writing the corpus store",
                          tmp_path / "s" / "store" / f"{TRAIN}.zarr")
    assert temp_leftovers(tmp_path / "s") == []


def test_disk_full_while_writing_a_checkpoint_keeps_the_previous(fast, tmp_path, monkeypatch):
    _, shards = fast

    def write(fh, b):                                # the second checkpoint: half written, then the disk is full
        fh.write(bytes(b)[: len(b) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "open", failing_open(2, write, []), raising=False)
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--dev", "", "--checkpoint-every", "2"), ok=False)
    assert_one_line_error(res, "no space left on device while writing", tmp_path / "weights" / "last.pt", "intact")
    state = load_last(tmp_path)
    assert (state.epoch, state.step) == (0, 2)                       # the first checkpoint, whole
    assert temp_leftovers(tmp_path / "weights") == []


class Died(BaseException):
    """Stands for the process dying in the middle of a write."""


class FailingFile:
    """A file whose write() is replaced (file objects' methods cannot be monkeypatched)."""

    def __init__(self, fh, write):
        self._fh, self._write = fh, write

    def write(self, b):
        return self._write(self._fh, b)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def failing_open(nth: int, write, saves: list):
    """open() for training.checkpoint whose `nth` write of a last.pt temp file calls `write`."""
    real_open = builtins.open

    def fake(file, mode="r", *a, **k):
        fh = real_open(file, mode, *a, **k)
        if "w" in mode and ".last.pt.tmp" in str(file):
            saves.append(file)
            if len(saves) == nth:
                return FailingFile(fh, write)
        return fh
    return fake


def test_crash_during_checkpoint_write_keeps_the_previous(fast, tmp_path, monkeypatch):
    _, shards = fast

    def write(fh, b):
        fh.write(bytes(b)[:1000])
        raise Died

    monkeypatch.setattr(ckpt, "open", failing_open(3, write, []), raising=False)
    with pytest.raises(Died):
        cli(*train_args(shards, tmp_path, "--epochs", "1", "--dev", "", "--checkpoint-every", "2"))
    state = load_last(tmp_path)
    assert (state.epoch, state.step) == (0, 4)
    monkeypatch.undo()
    # A SIGKILL in the same place would also leave the temp file: the next run removes it.
    stale = tmp_path / "weights" / ".last.pt.tmp999999"
    stale.write_bytes(b"half a checkpoint")
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--dev", "", "--checkpoint-every", "2", "--resume"))
    assert f"removed {stale}" in res.output and "resumed at epoch 1, step 4" in res.output
    assert not stale.exists() and load_last(tmp_path).epoch == 1


def test_damaged_checkpoint_is_one_line(fast, tmp_path):
    _, shards = fast
    w = tmp_path / "weights"
    w.mkdir()
    (w / "last.pt").write_bytes(b"PK\x03\x04 not really a zip")
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--resume"), ok=False)
    assert_one_line_error(res, "cannot read checkpoint", w / "last.pt", "damaged")


# ------------------------------------------------------------------ 8. full disk (real, tmpfs)

@pytest.fixture
def tiny_disk(tmp_path):
    """A mounted tmpfs of a given size (needs root and mount permission; skipped otherwise)."""
    mounted = []

    def make(size_bytes: int) -> Path:
        d = tmp_path / f"disk{len(mounted)}"
        d.mkdir()
        size = max(4096, (size_bytes + 4095) // 4096 * 4096)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
        mounted.append(d)
        return d

    yield make
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_real_full_disk_shards_and_checkpoints(pipe, fast, tiny_corpus, tmp_path, tiny_disk):
    # Shards: a 256 KB disk fills up during the build.
    disk = tiny_disk(256 * 1024)
    res = cli("shards", "--data", tiny_corpus, "--shards", disk / "s", "--workers", "1", "--quiet", ok=False)
    assert_one_line_error(res, "no space left on device while writing", "free some space and rerun")
    assert temp_leftovers(disk) == []

    # Checkpoints: room for one checkpoint, not for its replacement beside it.
    _, shards = fast
    train_and_stop(train_config(shards, tmp_path / "probe", epochs=1, dev="", lr=LR), after=1)
    size = (tmp_path / "probe" / "weights" / "last.pt").stat().st_size
    disk = tiny_disk(int(size * 1.6) + 8192)
    run = ["train", "--shards", shards, "--weights", disk / "w", "--results", tmp_path / "results",
           "--preset", "model1", "--workers", "0", "--max-frames", MAX_FRAMES, "--quiet", "--dev", "",
           "--epochs", "1", "--checkpoint-every", "1"]
    res = cli(*run, ok=False)
    assert_one_line_error(res, "no space left on device while writing", disk / "w" / "last.pt", "intact")
    state = ckpt.Checkpoint.load(disk / "w" / "last.pt")
    assert (state.epoch, state.step) == (0, 1)
    assert temp_leftovers(disk) == []


# ------------------------------------------------------------------ 9. non-finite losses

def test_nan_loss_steps_are_skipped_and_counted(fast, tmp_path, monkeypatch):
    _, shards = fast
    real = tloop.ctc_sum
    calls = []

    def sometimes_nan(lp, out_lens, batch):
        calls.append(1)
        loss = real(lp, out_lens, batch)
        return loss * float("nan") if len(calls) in (2, 3) else loss

    monkeypatch.setattr(tloop, "ctc_sum", sometimes_nan)
    cli(*train_args(shards, tmp_path, "--epochs", "1", "--dev", ""))
    [row] = metrics(tmp_path)
    assert row["skipped_steps"] == 2 and np.isfinite(row["train_loss"])
    state = load_last(tmp_path)
    assert all(torch.isfinite(t).all() for t in state.model.values() if t.is_floating_point())


def test_persistent_inf_loss_stops_the_run_clearly(fast, tmp_path, monkeypatch):
    _, shards = fast
    monkeypatch.setattr(tloop, "ctc_sum", lambda lp, out_lens, batch: lp.sum() * float("inf"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("max_bad_steps: 3\n")
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--dev", "", "--config", recipe), ok=False)
    assert_one_line_error(res, "loss was NaN/inf for 3 consecutive steps", "lower --lr or check the data")
