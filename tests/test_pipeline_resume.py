"""Stage 1 reruns: reuse, repair of missing or damaged pieces, interrupted runs, incremental
rebuilds after input changes, and `phonerec shards --verify`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import manifest as mf
from phonerec.cli import main as cli_main
from pipeline.shards import PLAN_NAME


def files_snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """(mtime_ns, bytes) of every manifest, tar and stats file."""
    out = {}
    for pattern in ("*/*.tar", "*/manifest.json", "stats.json"):
        for p in sorted(root.glob(pattern)):
            out[str(p.relative_to(root))] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


@pytest.fixture
def shards_copy(pipe, tiny_shards, tmp_path) -> Path:
    return pipe.copy_tree(tiny_shards, tmp_path / "shards")


@pytest.fixture
def corpus_and_shards(pipe, tiny_corpus, tiny_shards, tmp_path):
    """A private copy of the corpus, and shards built from it in this process (as a long-lived
    process would rebuild them)."""
    data = pipe.copy_tree(tiny_corpus, tmp_path / "data")
    pipe.build(data, tmp_path / "shards")
    assert pipe.tar_hashes(tmp_path / "shards") == pipe.tar_hashes(tiny_shards)
    return data, tmp_path / "shards"


# ------------------------------------------------------------------------------ reuse and repair

def test_rerun_reuses_everything(pipe, tiny_corpus, shards_copy):
    before = files_snapshot(shards_copy)
    assert len(before) == 12 + 3 + 1
    summary = pipe.build(tiny_corpus, shards_copy)
    assert [s.reused_store for s in summary.splits] == [True, True, True]
    assert files_snapshot(shards_copy) == before              # nothing rewritten, not even touched
    assert [s.kept for s in summary.splits] == [60, 12, 10]


@pytest.mark.parametrize("also_manifest", [True, False], ids=["tar+manifest", "tar"])
def test_deleted_shard_is_rewritten_alone(pipe, tiny_corpus, tiny_shards, shards_copy, also_manifest):
    before = files_snapshot(shards_copy)
    victim = shards_copy / pipe.DEV / f"{pipe.DEV}-000002.tar"
    victim.unlink()
    if also_manifest:
        mf.manifest_path(shards_copy, pipe.DEV).unlink()
    pipe.build(tiny_corpus, shards_copy)
    after = files_snapshot(shards_copy)
    assert pipe.tar_hashes(shards_copy) == pipe.tar_hashes(tiny_shards)
    assert after.keys() == before.keys()
    for name, (mtime, data) in before.items():
        assert after[name][1] == data, name                    # identical bytes everywhere
        if name != f"{pipe.DEV}/{victim.name}" and not name.endswith("manifest.json"):
            assert after[name][0] == mtime, f"{name} was rewritten"
    for split in (pipe.TRAIN, pipe.TEST):                     # other splits untouched
        assert after[f"{split}/manifest.json"][0] == before[f"{split}/manifest.json"][0]


def test_truncated_shard_is_rebuilt_on_rerun(pipe, tiny_corpus, tiny_shards, shards_copy):
    victim = shards_copy / pipe.TRAIN / f"{pipe.TRAIN}-000001.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    before = pipe.mtimes(shards_copy)
    pipe.build(tiny_corpus, shards_copy)
    assert pipe.tar_hashes(shards_copy) == pipe.tar_hashes(tiny_shards)
    after = pipe.mtimes(shards_copy)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {f"{pipe.TRAIN}/{victim.name}"}


def test_interrupted_run_is_finished(pipe, tiny_corpus, tiny_shards, shards_copy):
    """A run killed while writing dev shards: its plan file, two finished tars, a half-written temp
    tar, and temp files of the atomic writers elsewhere. The rerun keeps the finished tars."""
    dev = shards_copy / pipe.DEV
    m = json.loads((dev / "manifest.json").read_text())
    names = [s["name"] for s in m["shards"]]
    (dev / PLAN_NAME).write_text(json.dumps({"fingerprint": m["fingerprint"], "shards": names}))
    (dev / "manifest.json").unlink()
    for name in names[1::2]:
        (dev / name).unlink()
    (dev / f".{names[1]}.tmp4242").write_bytes(b"half a tar")
    (shards_copy / ".stats.json.tmp4242").write_text("{")
    (shards_copy / "store" / f"{pipe.DEV}.zarr.tmp4242").mkdir()
    (shards_copy / "store" / f"{pipe.DEV}.zarr.tmp4242" / "zarr.json").write_text("{")
    kept = {n: (dev / n).stat().st_mtime_ns for n in names[0::2]}

    pipe.build(tiny_corpus, shards_copy)
    assert pipe.tar_hashes(shards_copy) == pipe.tar_hashes(tiny_shards)
    assert json.loads((dev / "manifest.json").read_text()) == m
    assert {n: (dev / n).stat().st_mtime_ns for n in names[0::2]} == kept
    assert temp_leftovers(shards_copy) == []
    assert sorted(p.name for p in dev.iterdir() if p.suffix == ".tar") == names


def test_tars_of_another_plan_are_not_trusted(pipe, tiny_corpus, tiny_shards, shards_copy):
    """Leftovers of an interrupted run with other settings are replaced, whatever their names."""
    dev = shards_copy / pipe.DEV
    (dev / PLAN_NAME).write_text(json.dumps({"fingerprint": "another-plan", "shards": []}))
    (dev / "manifest.json").unlink()
    (dev / f"{pipe.DEV}-000001.tar").write_bytes(b"not the right tar" * 100)
    (dev / f"{pipe.DEV}-000007.tar").write_bytes(b"stale")
    pipe.build(tiny_corpus, shards_copy)
    assert pipe.tar_hashes(shards_copy) == pipe.tar_hashes(tiny_shards)


# ------------------------------------------------------------------------------ incremental rebuilds

def rewrite_features(path: Path, x: np.ndarray) -> None:
    st = path.stat()
    np.save(path, x)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a visibly newer file, on any clock


def test_changed_dev_file_rebuilds_dev_only(pipe, corpus_and_shards):
    data, shards = corpus_and_shards
    before = files_snapshot(shards)
    uid = pipe.raw_ids(data, pipe.DEV)[3]
    path = data / pipe.DEV / "mfcc" / f"{uid}.npy"
    x = np.load(path)
    rewrite_features(path, (x + 1.5).astype(np.float32))

    summary = pipe.build(data, shards)
    assert [s.reused_store for s in summary.splits] == [True, False, True]
    after = files_snapshot(shards)
    for name in before:
        if not name.startswith(pipe.DEV + "/"):
            assert after[name] == before[name], f"{name} changed"   # train, test and stats untouched
    assert after[f"{pipe.DEV}/manifest.json"] != before[f"{pipe.DEV}/manifest.json"]
    m = mf.load(shards, pipe.DEV)
    changed_shard = m.shards[int(np.searchsorted(m.shard_start, m.ids.index(uid), side="right")) - 1].name
    assert after[f"{pipe.DEV}/{changed_shard}"][1] != before[f"{pipe.DEV}/{changed_shard}"][1]
    _, per_shard = pipe.read_split(shards, pipe.DEV)
    stats = json.loads((shards / "stats.json").read_text())
    key = m.keys[m.ids.index(uid)]
    (feats,) = [f for samples in per_shard for k, f, _ in samples if k == key]
    want = (np.load(path).astype(np.float64) - stats["mean"]) / np.asarray(stats["std"])
    np.testing.assert_allclose(feats.astype(np.float64), want, rtol=2**-10, atol=1e-6)


def test_changed_train_file_rebuilds_every_split(pipe, corpus_and_shards):
    data, shards = corpus_and_shards
    before = files_snapshot(shards)
    old_stats = json.loads((shards / "stats.json").read_text())
    uid = pipe.raw_ids(data, pipe.TRAIN)[5]
    path = data / pipe.TRAIN / "mfcc" / f"{uid}.npy"
    x = np.load(path)
    rewrite_features(path, (x[: int(len(x) * 0.8)] * 1.3).astype(np.float32))   # shorter, and different values

    summary = pipe.build(data, shards)
    assert [s.reused_store for s in summary.splits] == [False, True, True]
    stats = json.loads((shards / "stats.json").read_text())
    xt = pipe.train_matrix(data, [pipe.TRAIN])
    np.testing.assert_allclose(stats["mean"], xt.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], xt.std(0), rtol=1e-9)
    assert stats["fingerprint"] != old_stats["fingerprint"] and stats["count"] == len(xt)
    after = files_snapshot(shards)
    for name in before:
        assert after[name][1] != before[name][1], f"{name} was not rebuilt"   # every shard is renormalized
    for split, labelled in ((pipe.TRAIN, True), (pipe.DEV, True), (pipe.TEST, False)):
        m, per_shard = pipe.read_split(shards, split)
        assert m.stats.to_json() == stats
        key_to_id = dict(zip(m.keys, m.ids))
        for samples in per_shard:
            for key, feats, labels in samples:
                raw = pipe.raw_features(data, split, key_to_id[key]).astype(np.float64)
                want = (raw - xt.mean(0)) / xt.std(0)
                np.testing.assert_allclose(feats.astype(np.float64), want, rtol=2**-10, atol=1e-6)
    res = CliRunner().invoke(cli_main, ["shards", "--verify", "--data", str(data), "--shards", str(shards)])
    assert res.exit_code == 0, res.output


def test_removed_and_added_dev_files(pipe, corpus_and_shards):
    data, shards = corpus_and_shards
    ids = pipe.raw_ids(data, pipe.DEV)
    gone = ids[0]
    (data / pipe.DEV / "mfcc" / f"{gone}.npy").unlink()
    (data / pipe.DEV / "transcript" / f"{gone}.npy").rename(data / pipe.DEV / "transcript" / "zz-orphan.npy")
    # before rebuilding, --verify notices that the shards no longer match the data
    res = CliRunner().invoke(cli_main, ["shards", "--verify", "--data", str(data), "--shards", str(shards)])
    assert res.exit_code != 0 and gone in res.output
    pipe.build(data, shards)
    m = mf.load(shards, pipe.DEV)
    assert sorted(m.ids) == ids[1:] and m.rejected == 1 and m.inputs == len(ids)
    rows = [r for r in pipe.rejected_rows(shards) if r["split"] == pipe.DEV]
    assert [(r["utterance"], r["reason"]) for r in rows] == [("zz-orphan", "transcript without features")]
    res = CliRunner().invoke(cli_main, ["shards", "--verify", "--data", str(data), "--shards", str(shards)])
    assert res.exit_code == 0, res.output


# ------------------------------------------------------------------------------ --verify

def verify(data, shards):
    return CliRunner().invoke(cli_main, ["shards", "--verify", "--data", str(data), "--shards", str(shards)])


def test_verify_passes_on_good_build(pipe, tiny_corpus, tiny_shards):
    res = verify(tiny_corpus, tiny_shards)
    assert res.exit_code == 0, res.output
    for split in (pipe.TRAIN, pipe.DEV, pipe.TEST):
        assert f"{split}: OK" in res.output


@pytest.mark.parametrize("damage", ["flip", "delete", "truncate"])
def test_verify_names_damaged_shard(pipe, tiny_corpus, tiny_shards, shards_copy, damage):
    victim = shards_copy / pipe.DEV / f"{pipe.DEV}-000001.tar"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        victim.write_bytes(bytes(data))
    elif damage == "delete":
        victim.unlink()
    else:
        victim.write_bytes(bytes(data[:len(data) - 700]))
    res = verify(tiny_corpus, shards_copy)
    assert res.exit_code != 0
    assert victim.name in res.output
    assert f"{pipe.TRAIN}: OK" in res.output and f"{pipe.DEV}: 1 problem(s)" in res.output
    # the repair the message suggests: delete damaged shards, rerun
    victim.unlink(missing_ok=True)
    pipe.build(tiny_corpus, shards_copy)
    assert verify(tiny_corpus, shards_copy).exit_code == 0
    assert pipe.tar_hashes(shards_copy) == pipe.tar_hashes(tiny_shards)


def test_verify_finds_unaccounted_input(pipe, tiny_corpus, tiny_shards, tmp_path):
    data = pipe.copy_tree(tiny_corpus, tmp_path / "data")
    extra = data / pipe.TEST / "mfcc" / "9999-1-0000.npy"
    extra.write_bytes((data / pipe.TEST / "mfcc" / f"{pipe.raw_ids(data, pipe.TEST)[0]}.npy").read_bytes())
    res = verify(data, tiny_shards)
    assert res.exit_code != 0 and "9999-1-0000" in res.output and "neither in a shard nor rejected" in res.output


def test_verify_without_manifests_fails(tmp_path):
    res = CliRunner().invoke(cli_main, ["shards", "--verify", "--shards", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "no manifests" in res.output
