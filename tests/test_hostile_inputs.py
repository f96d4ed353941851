"""Hostile and damaged inputs to stage 1: the files people really end up with (the published
archive's test split, a folder copied from a Mac, a symlinked data disk, a file name in another
encoding, a derived file damaged on disk). Every name that looks like an utterance is kept or
rejected with a reason, no user file is deleted, and no submission row moves.

(The .npy readers' cases are in test_hostile_reader.py, the trainer's in test_hostile_training.py.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import build as build_mod
from pipeline import manifest as mf
from phonerec.cli import main as cli_main
from pipeline.shards import ShardOptions
from pipeline.vocab import to_codes

ROOT = Path(__file__).resolve().parents[1]


def build(data, out, **kw):
    """`phonerec shards` in-process with the test defaults; returns (summary, log lines)."""
    lines: list[str] = []
    opts = dict(train="train-clean-100", dev="dev-clean", test="test-clean", workers=1, progress=False)
    opts.update(kw)
    summary = build_mod.build(data, out, options=ShardOptions(min_shards=4), log=lines.append, **opts)
    return summary, lines


def cli(*args):
    return CliRunner().invoke(cli_main, [str(a) for a in args])


@pytest.fixture
def corpus(pipe, tiny_corpus, tmp_path) -> Path:
    """A writable copy of the tiny corpus (60 train, 12 dev, 10 unlabelled test utterances)."""
    return pipe.copy_tree(tiny_corpus, tmp_path / "data")


def ids_of(data, split="test-clean"):
    return sorted(p.name[:-4] for p in (Path(data) / split / "mfcc").glob("*.npy"))


def submission(m: mf.Manifest) -> list[tuple[int, str]]:
    """The submission rows predict would write if it decoded each utterance as a code naming its
    original position (so any shifted row shows)."""
    from training.submission import submission_rows
    hyps = {r: {"beam": [2 + int(m.index[r]) % 39]} for r in range(m.num_utterances)}
    rows, _ = submission_rows(m, hyps)
    return rows


def position_code(i: int) -> str:
    return to_codes([2 + i % 39])


# --------------------------------------------------------------- 0, 6: the test split's role

def test_case0_published_archive_submission_template_in_test_transcript(corpus, tmp_path):
    tdir = corpus / "test-clean" / "transcript"
    tdir.mkdir()
    (tdir / "random_submission.csv").write_text("index,label\n" + "".join(f"{i},A\n" for i in range(10)))
    _, log = build(corpus, tmp_path / "shards")
    m = mf.load(tmp_path / "shards", "test-clean")
    assert not m.labelled
    assert (m.num_utterances, m.rejected, m.inputs) == (10, 0, 10)
    assert [c for _, c in submission(m)] == [position_code(i) for i in range(10)]
    assert any("transcript/ folder is ignored" in line for line in log)


@pytest.mark.parametrize("stray", [None, "0000-0000-0000.npy"])
def test_case6_transcript_folder_in_test_split(pipe, corpus, tmp_path, stray):
    tdir = corpus / "test-clean" / "transcript"
    tdir.mkdir()
    if stray:
        pipe.write_npy(tdir / stray, np.array(["[SOS]", "AH", "[EOS]"]))
    build(corpus, tmp_path / "shards")
    m = mf.load(tmp_path / "shards", "test-clean")
    assert (m.num_utterances, m.rejected, m.inputs, m.labelled) == (10, 0, 10, False)
    assert len(submission(m)) == 10


# ------------------------------------------------------------------ 3: user files survive

def test_case3_shards_folder_is_never_the_data_folder(corpus):
    mine = [corpus / "train-clean-100" / "backup.tar", corpus / "dev-clean" / "dev-clean-000000.tar"]
    for p in mine:
        p.write_bytes(b"my own archive")
    for out in (corpus, corpus.parent, corpus / "dev-clean", corpus / "train-clean-100" / "out"):
        res = cli("shards", "--data", corpus, "--shards", out, "--quiet", "--workers", "1")
        assert res.exit_code == 1, res.output
        assert "--shards" in res.output and ("data folder" in res.output or "split folder" in res.output)
        assert res.output.strip().count("\n") == 0, res.output          # one line
    assert all(p.read_bytes() == b"my own archive" for p in mine)
    assert not (corpus / "store").exists() and not (corpus / "train-clean-100" / "manifest.json").exists()


def test_case3_cleanup_removes_only_files_of_ours(pipe, corpus, tmp_path):
    out = tmp_path / "shards"
    build(corpus, out)
    theirs = {out / "dev-clean" / "notes.tar": b"n", out / "dev-clean" / ".notes.tmp": b"t",
              out / ".profile.tmp": b"p", out / "dev-clean" / "train-clean-100-000001.tar": b"x"}
    for p, data in theirs.items():
        p.write_bytes(data)
    f = sorted((corpus / "dev-clean" / "mfcc").glob("*.npy"))[0]      # a changed dev file: dev is rebuilt
    pipe.write_npy(f, np.load(f)[:-1])
    build(corpus, out)
    assert {p: p.read_bytes() for p in theirs} == theirs
    assert not mf.load(out, "dev-clean").rejected


# ---------------------------------------------- 4, 5, 10: every utterance-like name accounted

def test_case4_dangling_symlink_and_folder_keep_their_rows(corpus, tmp_path):
    mfcc = corpus / "test-clean" / "mfcc"
    ids = ids_of(corpus)
    a, b = ids[2] + "a", ids[6] + "a"                       # sort right after the 3rd and 7th utterance
    (mfcc / f"{a}.npy").symlink_to(tmp_path / "elsewhere" / "gone.npy")
    (mfcc / f"{b}.npy").mkdir()
    _, _ = build(corpus, tmp_path / "shards")
    m = mf.load(tmp_path / "shards", "test-clean")
    assert (m.inputs, m.num_utterances, m.rejected) == (12, 10, 2)
    order = sorted(ids + [a, b])
    rows = submission(m)
    assert len(rows) == 12
    for i, (index, code) in enumerate(rows):
        assert index == i
        assert code == ("" if order[i] in (a, b) else position_code(i))
    reasons = {r["utterance"]: r["reason"] for r in build_mod_rejected(tmp_path / "shards")}
    assert "symbolic link to a missing file" in reasons[a]
    assert "is a folder" in reasons[b]


def build_mod_rejected(shards_dir):
    import csv
    with open(Path(shards_dir) / "rejected.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_case5_appledouble_files_are_not_utterances(corpus, tmp_path):
    mfcc = corpus / "test-clean" / "mfcc"
    for uid in ids_of(corpus)[:4]:
        (mfcc / f"._{uid}.npy").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60))
    (corpus / "train-clean-100" / "mfcc" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _, log = build(corpus, tmp_path / "shards")
    m = mf.load(tmp_path / "shards", "test-clean")
    assert (m.inputs, m.num_utterances, m.rejected) == (10, 10, 0)
    assert [c for _, c in submission(m)] == [position_code(i) for i in range(10)]
    assert any("test-clean: ignored 4 hidden file(s)" in line and "._" in line for line in log)


def test_case10_file_name_not_valid_utf8(pipe, corpus, tmp_path):
    rng = np.random.default_rng(3)
    for split in ("test-clean", "train-clean-100"):
        folder = os.fsencode(corpus / split / "mfcc")
        with open(folder + b"/9999-\xff\xfe-bad.npy", "wb") as fh:
            np.save(fh, pipe.random_feats(rng, 200))
    res = cli("shards", "--data", corpus, "--shards", tmp_path / "shards", "--quiet", "--workers", "1",
              "--min-shards", "4")
    assert res.exit_code == 0, res.output
    m = mf.load(tmp_path / "shards", "test-clean")
    assert (m.inputs, m.num_utterances) == (11, 11)
    assert "9999-\\xff\\xfe-bad" in m.ids
    train = mf.load(tmp_path / "shards", "train-clean-100")
    assert train.inputs == 61 and train.rejected == 1       # no transcript for it: rejected, with a reason
    row = [r for r in build_mod_rejected(tmp_path / "shards") if "\\xff" in r["utterance"]]
    assert row and row[0]["reason"] == "features without a transcript"
    res = cli("shards", "--data", corpus, "--shards", tmp_path / "shards", "--verify")
    assert res.exit_code == 0, res.output


def test_also_upper_case_npy_extension(corpus, tmp_path):
    for split in ("train-clean-100", "test-clean"):
        for p in sorted((corpus / split).rglob("*.npy"))[:6]:
            p.rename(p.with_suffix(".NPY"))
    build(corpus, tmp_path / "shards")
    for split, n in (("train-clean-100", 60), ("test-clean", 10)):
        m = mf.load(tmp_path / "shards", split)
        assert (m.inputs, m.num_utterances, m.rejected) == (n, n, 0), split


# --------------------------------------------------------- 8, 11, 12: trust what can be checked

def test_case8_missing_zarr_chunk_rebuilds_the_store(pipe, corpus, tmp_path):
    out = tmp_path / "shards"
    build(corpus, out)
    want = pipe.tar_hashes(out)
    chunk = sorted((out / "store" / "train-clean-100.zarr" / "features" / "c").rglob("*"))[-1]
    assert chunk.is_file()
    chunk.unlink()
    first = sorted((out / "train-clean-100").glob("*.tar"))[-1]
    first.unlink()
    _, log = build(corpus, out)
    assert any("incomplete or damaged: rebuilding" in line for line in log)
    assert pipe.tar_hashes(out) == want
    assert cli("shards", "--shards", out, "--verify").exit_code == 0


def test_case11_every_training_file_bad_is_one_line_and_rejected_tsv(corpus, tmp_path):
    for p in (corpus / "train-clean-100" / "mfcc").glob("*.npy"):
        p.write_bytes(b"not a numpy file")
    res = cli("shards", "--data", corpus, "--shards", tmp_path / "shards", "--quiet", "--workers", "1")
    assert res.exit_code == 1
    assert "Traceback" not in res.output and res.output.strip().count("\n") == 0, res.output
    assert "rejected.tsv" in res.output and "no usable training utterances" in res.output
    rows = build_mod_rejected(tmp_path / "shards")
    assert sum(r["split"] == "train-clean-100" for r in rows) == 60


@pytest.mark.parametrize("damage", ["stats.json", "manifest", "plan", "store"])
def test_case12_damaged_derived_files_are_rebuilt(pipe, corpus, tmp_path, damage):
    out = tmp_path / "shards"
    build(corpus, out)
    want_stats, want_tars = (out / "stats.json").read_bytes(), pipe.tar_hashes(out)
    want_manifest = (out / "dev-clean" / "manifest.json").read_bytes()
    target = {"stats.json": out / "stats.json", "manifest": out / "dev-clean" / "manifest.json",
              "plan": out / "dev-clean" / ".plan.json",
              "store": out / "store" / "dev-clean.zarr" / "zarr.json"}[damage]
    target.write_bytes(b'{"truncated": ')
    _, log = build(corpus, out)
    assert (out / "stats.json").read_bytes() == want_stats
    assert (out / "dev-clean" / "manifest.json").read_bytes() == want_manifest
    assert pipe.tar_hashes(out) == want_tars
    if damage == "stats.json":
        assert any("stats.json is damaged" in line and "recomputing" in line for line in log)


def test_also_hand_edited_manifest_is_refused_and_rewritten(corpus, tmp_path):
    out = tmp_path / "shards"
    build(corpus, out)
    path = out / "test-clean" / "manifest.json"
    want = path.read_bytes()
    raw = json.loads(want)
    idx = raw["utterances"]["index"]
    idx[0], idx[1] = idx[1], idx[0]                  # two test rows swapped by hand
    path.write_text(json.dumps(raw, indent=1))
    with pytest.raises(mf.ManifestError, match="edited or damaged"):
        mf.load(out, "test-clean")
    build(corpus, out)
    assert path.read_bytes() == want


# --------------------------------------------------------------------------- the "also" cases

def test_also_concurrent_builds_on_one_folder(corpus, tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1234, started now\n")
        held.flush()
        res = cli("shards", "--data", corpus, "--shards", out, "--quiet", "--workers", "1")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "is in use by another command" in res.output and "pid 1234" in res.output
    assert not (out / "store").exists()
    res = cli("shards", "--data", corpus, "--shards", out, "--quiet", "--workers", "1")   # lock released
    assert res.exit_code == 0, res.output


def test_also_shard_size_mb_zero_is_a_usage_error(corpus, tmp_path):
    for flag, value in (("--shard-size-mb", "0"), ("--shard-size-mb", "-1"), ("--min-shards", "0")):
        res = cli("shards", "--data", corpus, "--shards", tmp_path / "s", flag, value)
        assert res.exit_code == 2 and flag in res.output, res.output
    assert not (tmp_path / "s").exists()


def test_also_empty_test_split_warns(corpus, tmp_path):
    for p in (corpus / "test-clean" / "mfcc").glob("*.npy"):
        p.unlink()
    _, log = build(corpus, tmp_path / "shards")
    assert any("warning: test split test-clean has no utterances" in line for line in log)


def test_also_makefile_variables_with_spaces():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    out = subprocess.run(["make", "-n", "-C", str(ROOT), "shards", "train", "predict", "evaluate",
                          "DATA=/x/my data", "SHARDS=/y/my shards", "WEIGHTS=/w/my w", "RESULTS=/r/my r",
                          "BIN=/nonexistent/bin"], capture_output=True, text=True, env=env, check=True).stdout
    lines = [shlex.split(line) for line in out.splitlines() if "phonerec" in line]
    seen = set()
    for argv in lines:
        for flag, want in (("--data", "/x/my data"), ("--shards", "/y/my shards"), ("--weights", "/w/my w"),
                           ("--results", "/r/my r")):
            if flag in argv and argv[0].endswith(("phonerec", "torchrun")):
                assert argv[argv.index(flag) + 1] == want, argv
                seen.add(flag)
    assert seen == {"--data", "--shards", "--weights", "--results"}
