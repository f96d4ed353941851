"""Stage 1 end to end on small corpora written in the real raw layout.

Covers the round trip raw -> zarr -> normalized float16 shards -> WebDataset read-back, the
accounting of every utterance (kept or rejected with a reason), statistics, ordering and keys.
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import manifest as mf
from phonerec.cli import main as cli_main
from pipeline.shardformat import make_keys
from pipeline.vocab import ctc_min_frames

F16_RTOL = 2.0 ** -10          # float16 keeps 11 significant bits: relative error <= 2**-11 (+ float32 rounding)
F16_ATOL = 1e-6                # subnormal float16 range near 0


def expected_normalized(x, mean, std, cmn=False):
    x = x.astype(np.float64)
    if cmn:
        x = x - x.mean(axis=0, keepdims=True)
    return (x - mean) / std


def check_round_trip(pipe, data, shards_dir, split, mean, std, labelled, cmn=False):
    m, per_shard = pipe.read_split(shards_dir, split)
    key_to_id = dict(zip(m.keys, m.ids))
    seen = []
    for samples in per_shard:
        for key, feats, labels in samples:
            uid = key_to_id[key]
            seen.append(uid)
            assert feats.dtype == np.float16 and feats.ndim == 2 and feats.shape[1] == 15
            want = expected_normalized(pipe.raw_features(data, split, uid), mean, std, cmn)
            assert feats.shape == want.shape
            np.testing.assert_allclose(feats.astype(np.float64), want, rtol=F16_RTOL, atol=F16_ATOL,
                                       err_msg=f"{split}/{uid}")
            if labelled:
                assert labels is not None and labels.dtype == np.uint8
                np.testing.assert_array_equal(labels, pipe.raw_labels(data, split, uid), err_msg=f"{split}/{uid}")
            else:
                assert labels is None
    return m, seen


# ------------------------------------------------------------------------------ round trip

def test_round_trip_all_splits(pipe, tiny_corpus, tiny_shards):
    x = pipe.train_matrix(tiny_corpus, [pipe.TRAIN])
    mean, std = x.mean(axis=0), x.std(axis=0)
    for split, labelled in [(pipe.TRAIN, True), (pipe.DEV, True), (pipe.TEST, False)]:
        m, seen = check_round_trip(pipe, tiny_corpus, tiny_shards, split, mean, std, labelled)
        assert m.labelled is labelled
        assert sorted(seen) == pipe.raw_ids(tiny_corpus, split)
        assert len(seen) == len(set(seen)) == pipe.TINY_SPLITS[split]


def test_round_trip_nested_transcripts_and_labels(pipe, tmp_path):
    from corpora.random import generate
    data = tmp_path / "data"
    generate(data, {"train-clean-100": 14, "dev-clean": 5}, seed=5, nested_transcripts=True, workers=1,
             progress=False, unlabelled=())
    assert (data / "dev-clean" / "transcript" / "raw").is_dir()
    assert not list((data / "dev-clean" / "transcript").glob("*.npy"))
    pipe.build(data, tmp_path / "shards", test="")
    x = pipe.train_matrix(data, [pipe.TRAIN])
    for split in (pipe.TRAIN, pipe.DEV):
        m, seen = check_round_trip(pipe, data, tmp_path / "shards", split, x.mean(0), x.std(0), labelled=True)
        assert sorted(seen) == pipe.raw_ids(data, split)
        assert m.rejected == 0


def test_object_array_transcripts_accepted(pipe, tmp_path):
    """Some releases store transcripts as object arrays of str: those are read like unicode arrays."""
    rng = np.random.default_rng(3)
    data = tmp_path / "data"
    syms = ["[SOS]", "[SIL]", "AA", "B", "AA", "[SIL]", "[EOS]"]
    for i in range(4):
        pipe.write_utterance(data, "train", f"u{i}", pipe.random_feats(rng, 30 + i))
        pipe.write_npy(data / "train" / "transcript" / f"u{i}.npy", np.array(syms, dtype=object), allow_pickle=True)
    pipe.build(data, tmp_path / "s", train="train", dev="", test="")
    m, per_shard = pipe.read_split(tmp_path / "s", "train")
    assert m.num_utterances == 4 and m.rejected == 0
    for samples in per_shard:
        for _, _, labels in samples:
            assert labels.tolist() == [1, 14, 27, 14, 1]


# ------------------------------------------------------------------------------ accounting

def check_manifest_matches_tars(pipe, shards_dir, split):
    m, per_shard = pipe.read_split(shards_dir, split)
    assert len(per_shard) == len(m.shards) >= 1
    starts = m.shard_start
    for i, (info, samples) in enumerate(zip(m.shards, per_shard)):
        frames = [len(f) for _, f, _ in samples]
        assert info.utterances == len(samples)
        assert info.frames == sum(frames)
        assert info.min_frames == min(frames) and info.max_frames == max(frames)
        assert info.bytes == (m.directory / info.name).stat().st_size
        assert info.sha256 == pipe.sha256(m.directory / info.name)
        assert [k for k, _, _ in samples] == m.keys[starts[i]:starts[i + 1]]
        assert frames == m.frames[starts[i]:starts[i + 1]].tolist()
        lens = [0 if lab is None else len(lab) for _, _, lab in samples]
        assert lens == m.label_lens[starts[i]:starts[i + 1]].tolist()
    keys = [k for samples in per_shard for k, _, _ in samples]
    assert len(keys) == len(set(keys)) == m.num_utterances
    assert m.total_frames == sum(info.frames for info in m.shards)
    return m


def test_every_utterance_accounted_for(pipe, tiny_corpus, tiny_shards):
    for split in (pipe.TRAIN, pipe.DEV, pipe.TEST):
        m = check_manifest_matches_tars(pipe, tiny_shards, split)
        raw = pipe.raw_ids(tiny_corpus, split)
        assert m.inputs == len(raw) and m.rejected == 0
        assert sorted(m.ids) == raw
        assert len(m.shards) == 4
    assert pipe.rejected_rows(tiny_shards) == []


# ------------------------------------------------------------------------------ bad inputs

GOOD_SYMS = ["AA", "B", "K", "IY", "S", "T", "N", "EH"]


def good_transcript(rng, frames):
    n = max(1, frames // 8)
    body = [GOOD_SYMS[i % len(GOOD_SYMS)] for i in rng.permutation(n)]
    return ["[SOS]", *body, "[EOS]"]


def _npy_bytes(arr, allow_pickle=False):
    import io
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


REPEATS_BODY = ["AA", "AA", "B", "B", "B", "K"]     # L = 6 labels, 3 adjacent repeats: CTC needs 9 frames


def make_bad_corpus(pipe, data: Path):
    """Good utterances plus one of each bad case. Returns {case: (split, uid, bad file, reason words)}
    for rejected cases and {split: kept ids} for everything that must survive."""
    rng = np.random.default_rng(11)
    kept: dict[str, list[str]] = {"train": [], "dev": [], "test": []}
    for split, n in (("train", 12), ("dev", 4), ("test", 5)):
        for i in range(n):
            uid = f"{split}-good-{i:02d}"
            frames = int(rng.integers(40, 160))
            pipe.write_utterance(data, split, uid, pipe.random_feats(rng, frames),
                                 None if split == "test" else good_transcript(rng, frames))
            kept[split].append(uid)

    mf_ = lambda split, uid: data / split / "mfcc" / f"{uid}.npy"  # noqa: E731
    tr_ = lambda split, uid: data / split / "transcript" / f"{uid}.npy"  # noqa: E731
    cases = {}

    def feat_case(case, payload, words, split="train", transcript=True):
        uid = f"bad-{case}"
        path = mf_(split, uid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
        if transcript and split != "test":
            pipe.write_npy(tr_(split, uid), np.asarray(["[SOS]", "AA", "[EOS]"]))
        cases[case] = (split, uid, path, words)

    good = _npy_bytes(pipe.random_feats(rng, 50))
    feat_case("empty", b"", ["empty", "0 bytes"])
    feat_case("truncated", good[:len(good) // 2], ["truncated"])
    feat_case("truncated-header", good[:40], ["truncated"])
    feat_case("not-npy", b"this is a text file, not a numpy array\n" * 4, ["not a .npy"])
    feat_case("int-dtype", _npy_bytes(np.ones((50, 15), dtype=np.int32)), ["dtype", "int32"])
    feat_case("object", _npy_bytes(np.array([[1.0] * 15] * 20, dtype=object), allow_pickle=True), ["object"])
    feat_case("shape-1d", _npy_bytes(np.ones(50, np.float32)), ["shape", "[50]"])
    feat_case("shape-13", _npy_bytes(np.ones((50, 13), np.float32)), ["shape", "[50, 13]"])
    feat_case("transposed", _npy_bytes(np.ones((15, 50), np.float32)), ["shape", "transposed"])
    feat_case("zero-frames", _npy_bytes(np.ones((0, 15), np.float32)), ["0 frames"])
    nan = pipe.random_feats(rng, 50)
    nan[7, 3] = np.nan
    feat_case("nan", _npy_bytes(nan), ["NaN"])
    inf = pipe.random_feats(rng, 50)
    inf[9, 0] = -np.inf
    feat_case("inf", _npy_bytes(inf), ["infinity"])
    big = pipe.random_feats(rng, 50).astype(np.float64)
    big[3, 3] = 1e300
    feat_case("float32-overflow", _npy_bytes(big), ["float32"])
    # the unlabelled split rejects bad features too
    feat_case("test-nan", _npy_bytes(nan), ["NaN"], split="test")
    feat_case("test-transposed", _npy_bytes(np.ones((15, 70), np.float32)), ["transposed"], split="test")

    def trans_case(case, symbols_or_bytes, words, frames=60, split="train", blame_features=False):
        """A bad transcript (reported with the transcript's path) or, with `blame_features`, a pair that
        does not fit together (reported with the features file, like every other pair-level problem)."""
        uid = f"bad-{case}"
        pipe.write_npy(mf_(split, uid), pipe.random_feats(rng, frames))
        path = tr_(split, uid)
        if isinstance(symbols_or_bytes, bytes):
            path.write_bytes(symbols_or_bytes)
        else:
            pipe.write_npy(path, np.asarray(symbols_or_bytes))
        cases[case] = (split, uid, mf_(split, uid) if blame_features else path, words)

    trans_case("unknown-symbol", ["[SOS]", "AA", "XX", "B", "[EOS]"], ["unknown symbol", "'XX'"])
    trans_case("no-sos-eos", ["AA", "B", "K"], ["[SOS]", "[EOS]"])
    trans_case("no-eos", ["[SOS]", "AA", "B"], ["[EOS]"])
    trans_case("empty-body", ["[SOS]", "[EOS]"], ["empty after stripping"])
    trans_case("transcript-int", np.arange(5), ["symbol strings"])
    trans_case("transcript-not-npy", b"[SOS] AA B [EOS]\n", ["not a .npy"], split="dev")
    trans_case("transcript-empty-file", b"", ["empty", "0 bytes"], split="dev")
    trans_case("ctc-too-long", ["[SOS]", *(GOOD_SYMS * 3), "[EOS]"], ["CTC", "24 labels"], frames=10,
               blame_features=True)
    trans_case("ctc-repeat-short", ["[SOS]", *REPEATS_BODY, "[EOS]"], ["CTC", "8 frames", "at least 9"],
               frames=8, blame_features=True)

    uid = "bad-no-transcript"
    pipe.write_npy(mf_("train", uid), pipe.random_feats(rng, 60))
    cases["features-without-transcript"] = ("train", uid, mf_("train", uid), ["without a transcript"])
    uid = "bad-no-features"
    pipe.write_npy(tr_("dev", uid), np.asarray(["[SOS]", "AA", "[EOS]"]))
    cases["transcript-without-features"] = ("dev", uid, tr_("dev", uid), ["without features"])

    # CTC boundary: exactly L + repeats frames is enough; with no repeats T == L is enough
    pipe.write_utterance(data, "train", "edge-ctc-repeat-exact", pipe.random_feats(rng, 9),
                         ["[SOS]", *REPEATS_BODY, "[EOS]"])
    pipe.write_utterance(data, "train", "edge-ctc-norepeat-exact", pipe.random_feats(rng, 5),
                         ["[SOS]", "AA", "B", "AA", "B", "K", "[EOS]"])
    kept["train"] += ["edge-ctc-repeat-exact", "edge-ctc-norepeat-exact"]
    return cases, kept


@pytest.fixture(scope="module")
def bad_build(pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    data = root / "data"
    cases, kept = make_bad_corpus(pipe, data)
    summary = pipe.build(data, root / "shards", train="train", dev="dev", test="test", min_shards=3)
    return data, root / "shards", cases, kept, summary


def test_ctc_boundary_arithmetic():
    from pipeline.vocab import encode_transcript
    assert ctc_min_frames(encode_transcript(["[SOS]", *REPEATS_BODY, "[EOS]"])) == 9
    assert ctc_min_frames([5, 5, 5]) == 5
    assert ctc_min_frames([1, 2, 3]) == 3


BAD_CASES = ["empty", "truncated", "truncated-header", "not-npy", "int-dtype", "object", "shape-1d", "shape-13",
             "transposed", "zero-frames", "nan", "inf", "float32-overflow", "test-nan", "test-transposed",
             "unknown-symbol", "no-sos-eos", "no-eos", "empty-body", "transcript-int", "transcript-not-npy",
             "transcript-empty-file", "ctc-too-long", "ctc-repeat-short", "features-without-transcript",
             "transcript-without-features"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_rejected_with_reason(pipe, bad_build, case):
    data, shards, cases, kept, summary = bad_build
    split, uid, path, words = cases[case]
    rows = [r for r in pipe.rejected_rows(shards) if r["split"] == split and r["utterance"] == uid]
    assert len(rows) == 1, f"{case}: expected one rejected.tsv row, got {rows}"
    row = rows[0]
    assert row["file"] == str(path)
    for w in words:
        assert w.lower() in row["reason"].lower(), f"{case}: reason {row['reason']!r} does not mention {w!r}"
    assert any(r.uid == uid and r.reason == row["reason"] for r in summary.rejections)
    assert uid not in mf.load(shards, split).ids


def test_bad_inputs_do_not_stop_the_build(pipe, bad_build):
    data, shards, cases, kept, summary = bad_build
    assert set(BAD_CASES) == set(cases)
    rows = pipe.rejected_rows(shards)
    assert len(rows) == len(cases)
    for split in ("train", "dev", "test"):
        m = check_manifest_matches_tars(pipe, shards, split)
        rejected = {r["utterance"] for r in rows if r["split"] == split}
        raw = set(pipe.raw_ids(data, split))
        tdir = data / split / "transcript"
        raw |= {p.name[:-4] for p in tdir.glob("*.npy")} if tdir.is_dir() else set()
        assert set(m.ids) == set(kept[split])
        assert not set(m.ids) & rejected
        assert set(m.ids) | rejected == raw
        assert m.num_utterances + m.rejected == m.inputs == len(raw)
        assert m.rejected == len(rejected)
        assert len(m.shards) == 3                              # --min-shards 3, even for 4 or 5 utterances
    assert {"edge-ctc-repeat-exact", "edge-ctc-norepeat-exact"} <= set(mf.load(shards, "train").ids)
    # the kept utterances are intact, and statistics ignore every rejected file
    x = np.concatenate([pipe.raw_features(data, "train", u).astype(np.float64) for u in sorted(kept["train"])])
    stats = json.loads((shards / "stats.json").read_text())
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-9)
    assert stats["count"] == len(x)
    for split, labelled in (("train", True), ("dev", True), ("test", False)):
        check_round_trip(pipe, data, shards, split, x.mean(0), x.std(0), labelled)
    # and --verify accepts the result, reading rejected.tsv to account for the rejected inputs
    res = CliRunner().invoke(cli_main, ["shards", "--verify", "--data", str(data), "--shards", str(shards),
                                        "--train", "train", "--dev", "dev", "--test", "test"])
    assert res.exit_code == 0, res.output


def test_strict_fails_naming_the_file(pipe, tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    for i in range(3):
        pipe.write_utterance(data, "train-clean-100", f"ok{i}", pipe.random_feats(rng, 80),
                             good_transcript(rng, 80))
    bad = pipe.write_npy(data / "train-clean-100" / "mfcc" / "broken.npy", np.ones((80, 13), np.float32))
    pipe.write_npy(data / "train-clean-100" / "transcript" / "broken.npy", np.asarray(["[SOS]", "AA", "[EOS]"]))
    args = ["shards", "--data", str(data), "--shards", str(tmp_path / "s"), "--dev", "", "--test", "",
            "--quiet", "--workers", "1"]
    res = CliRunner().invoke(cli_main, [*args, "--strict"])
    assert res.exit_code != 0
    assert str(bad) in res.output and "shape" in res.output
    assert not (tmp_path / "s" / "train-clean-100" / "manifest.json").exists()
    # without --strict the same corpus builds and reports the file; a later --strict run still fails
    res = CliRunner().invoke(cli_main, args)
    assert res.exit_code == 0, res.output
    assert "1 rejected" in res.output
    res = CliRunner().invoke(cli_main, [*args, "--strict"])
    assert res.exit_code != 0 and str(bad) in res.output


def test_strict_fails_on_orphan_transcript(pipe, tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    pipe.write_utterance(data, "train-clean-100", "ok", pipe.random_feats(rng, 80), good_transcript(rng, 80))
    orphan = pipe.write_npy(data / "train-clean-100" / "transcript" / "lonely.npy", np.asarray(["[SOS]", "AA", "[EOS]"]))
    res = CliRunner().invoke(cli_main, ["shards", "--data", str(data), "--shards", str(tmp_path / "s"), "--dev", "",
                                        "--test", "", "--strict", "--quiet", "--workers", "1"])
    assert res.exit_code != 0 and str(orphan) in res.output


def test_strict_passes_on_clean_corpus(tiny_corpus, tmp_path):
    res = CliRunner().invoke(cli_main, ["shards", "--data", str(tiny_corpus), "--shards", str(tmp_path / "s"),
                                        "--strict", "--quiet", "--workers", "1", "--min-shards", "2"])
    assert res.exit_code == 0, res.output
    assert "82 utterances kept, 0 rejected" in res.output
    assert mf.available_splits(tmp_path / "s") == ["dev-clean", "test-clean", "train-clean-100"]


# ------------------------------------------------------------------------------ determinism

def manifest_json(shards_dir, split):
    return json.loads(mf.manifest_path(shards_dir, split).read_text())


def test_same_seed_gives_identical_bytes(pipe, tiny_corpus, tiny_shards, tmp_path):
    pipe.build(tiny_corpus, tmp_path / "again")
    assert pipe.tar_hashes(tmp_path / "again") == pipe.tar_hashes(tiny_shards)
    assert len(pipe.tar_hashes(tiny_shards)) == 12
    for split in (pipe.TRAIN, pipe.DEV, pipe.TEST):
        assert manifest_json(tmp_path / "again", split) == manifest_json(tiny_shards, split)
        a, b = mf.load(tmp_path / "again", split), mf.load(tiny_shards, split)
        assert a.directory != b.directory
    assert (tmp_path / "again" / "stats.json").read_bytes() == (tiny_shards / "stats.json").read_bytes()


def test_workers_do_not_change_output(pipe, tiny_corpus, tiny_shards, tmp_path):
    # train only: ingest, statistics and shard writing each run in a 2-process pool; the train shards do
    # not depend on the other splits, so they must equal the single-process build byte for byte
    pipe.build(tiny_corpus, tmp_path / "w2", workers=2, dev="", test="")
    want = {k: v for k, v in pipe.tar_hashes(tiny_shards).items() if k.startswith(pipe.TRAIN + "/")}
    assert pipe.tar_hashes(tmp_path / "w2") == want and len(want) == 4
    assert manifest_json(tmp_path / "w2", pipe.TRAIN) == manifest_json(tiny_shards, pipe.TRAIN)
    assert (tmp_path / "w2" / "stats.json").read_bytes() == (tiny_shards / "stats.json").read_bytes()


def test_parallel_ingest_equals_serial(pipe, tmp_path):
    """More utterances than one read window (64 x workers), so the double-buffered path really runs."""
    from pipeline.layout import list_split
    from pipeline.store import ingest

    rng = np.random.default_rng(12)
    data = tmp_path / "data"
    for i in range(200):
        n = int(rng.integers(12, 40))
        pipe.write_utterance(data, "train", f"u{i:03d}", pipe.random_feats(rng, n), good_transcript(rng, n))
    (data / "train" / "mfcc" / "u007.npy").write_bytes(b"broken")
    files = list_split(data, "train", labelled=True)
    serial = ingest(files, tmp_path / "one.zarr", workers=1, progress=False)
    parallel = ingest(files, tmp_path / "two.zarr", workers=2, progress=False)
    assert serial.ids == parallel.ids and len(serial.ids) == 199
    assert serial.rejections == parallel.rejections and serial.rejections[0].uid == "u007"
    for a, b in [(serial.offsets, parallel.offsets), (serial.index, parallel.index),
                 (serial.label_offsets, parallel.label_offsets)]:
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(serial.read_frames(0, 199), parallel.read_frames(0, 199))
    np.testing.assert_array_equal(serial.read_labels(0, 199), parallel.read_labels(0, 199))
    # the store is in length order (ties by name), read from the .npy headers before loading
    assert np.all(np.diff(serial.frames) >= 0)
    for pos, uid in enumerate(serial.ids):
        np.testing.assert_array_equal(serial.read_frames(pos, pos + 1), pipe.raw_features(data, "train", uid))
        assert files.ids[serial.index[pos]] == uid


def test_seed_only_permutes_equal_lengths(pipe, tmp_path):
    rng = np.random.default_rng(4)
    data = tmp_path / "data"
    lengths = [40] * 8 + [55] * 8 + [70] * 8 + [41, 56, 90]
    for i, n in enumerate(rng.permutation(lengths)):
        pipe.write_utterance(data, "train", f"u{i:02d}", pipe.random_feats(rng, int(n)), good_transcript(rng, int(n)))
    orders = {}
    for seed in (0, 1, 2):
        out = tmp_path / f"s{seed}"
        pipe.build(data, out, train="train", dev="", test="", seed=seed, min_shards=3)
        m = mf.load(out, "train")
        assert m.seed == seed
        assert m.frames.tolist() == sorted(lengths)
        orders[seed] = (m.ids, pipe.tar_hashes(out))
        check_manifest_matches_tars(pipe, out, "train")
    frames_of = {u: len(pipe.raw_features(data, "train", u)) for u in pipe.raw_ids(data, "train")}
    for seed in (1, 2):
        a, b = orders[0][0], orders[seed][0]
        assert a != b                                   # ties are broken differently...
        assert [frames_of[u] for u in a] == [frames_of[u] for u in b]   # ...but only among equal lengths
        for n in set(lengths):
            group_a = [u for u in a if frames_of[u] == n]
            group_b = [u for u in b if frames_of[u] == n]
            assert sorted(group_a) == sorted(group_b)
        assert orders[0][1] != orders[seed][1]
    # the single-length utterances sit at the same place in every order
    for u, n in frames_of.items():
        if lengths.count(n) == 1:
            assert len({orders[s][0].index(u) for s in orders}) == 1


# ------------------------------------------------------------------------------ order and length sorting

def test_test_split_order_restorable(pipe, tiny_corpus, tiny_shards):
    raw = pipe.raw_ids(tiny_corpus, pipe.TEST)
    m, per_shard = pipe.read_split(tiny_shards, pipe.TEST)
    key_to_id = dict(zip(m.keys, m.ids))
    for uid, pos in zip(m.ids, m.index):
        assert raw[pos] == uid
    restored = [m.ids[j] for j in np.argsort(m.index, kind="stable")]
    assert restored == raw
    in_tars = [key_to_id[k] for samples in per_shard for k, _, _ in samples]
    assert in_tars == m.ids
    assert m.ids != raw           # shards really are in length order, not name order
    assert sorted(m.index.tolist()) == list(range(len(raw)))


def test_index_with_rejections_points_into_raw_order(pipe, bad_build):
    data, shards, cases, kept, _ = bad_build
    raw = pipe.raw_ids(data, "test")
    m = mf.load(shards, "test")
    assert len(raw) == m.num_utterances + 2
    assert [raw[i] for i in m.index] == m.ids
    assert [m.ids[j] for j in np.argsort(m.index)] == sorted(kept["test"])
    assert {raw.index(cases[c][1]) for c in ("test-nan", "test-transposed")}.isdisjoint(m.index.tolist())


def test_shards_are_length_sorted(pipe, tiny_shards):
    for split in (pipe.TRAIN, pipe.DEV, pipe.TEST):
        m, per_shard = pipe.read_split(tiny_shards, split)
        frames = [len(f) for samples in per_shard for _, f, _ in samples]
        assert frames == sorted(frames)
        for a, b in zip(m.shards, m.shards[1:]):
            assert a.max_frames <= b.min_frames


def test_shards_have_narrow_length_ranges(pipe, tiny_corpus, tmp_path):
    """With enough shards, a batch drawn from one shard pads little, unlike a random split."""
    pipe.build(tiny_corpus, tmp_path / "s", min_shards=12, dev="", test="")
    m = mf.load(tmp_path / "s", pipe.TRAIN)
    assert len(m.shards) == 12
    padded = sum(s.utterances * s.max_frames for s in m.shards)
    assert padded / m.total_frames < 1.12
    ratios = sorted(s.max_frames / s.min_frames for s in m.shards)
    assert ratios[len(ratios) // 2] < 1.1                         # the typical shard is narrow
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(m.frames)
    cuts = m.shard_start
    random_pad = sum((cuts[i + 1] - cuts[i]) * shuffled[cuts[i]:cuts[i + 1]].max() for i in range(12))
    assert random_pad / m.total_frames > 1.2                      # what sorting saves


# ------------------------------------------------------------------------------ statistics

def test_stats_equal_numpy_over_train_only(pipe, tiny_corpus, tiny_shards):
    stats = json.loads((tiny_shards / "stats.json").read_text())
    x = pipe.train_matrix(tiny_corpus, [pipe.TRAIN])
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], x.std(0), rtol=1e-9)
    assert stats["count"] == len(x) and stats["splits"] == [pipe.TRAIN] and stats["cmn"] is False
    # dev/test data would have changed them measurably (so the comparison above can fail)
    x_all = pipe.train_matrix(tiny_corpus, [pipe.TRAIN, pipe.DEV, pipe.TEST])
    assert np.abs(np.asarray(stats["mean"]) - x_all.mean(0)).max() > 1e-6
    assert np.abs(np.asarray(stats["std"]) - x_all.std(0)).max() > 1e-6
    for split in (pipe.TRAIN, pipe.DEV, pipe.TEST):
        assert mf.load(tiny_shards, split).stats.to_json() == stats


def test_stats_cover_two_training_splits_and_cmn(pipe, tmp_path):
    from corpora.random import generate
    data = tmp_path / "data"
    generate(data, {"train-a": 10, "train-b": 8, "dev-clean": 4}, seed=9, workers=1, progress=False, unlabelled=())
    out = tmp_path / "s"
    pipe.build(data, out, train="train-a,train-b", test="", min_shards=2)
    stats = json.loads((out / "stats.json").read_text())
    x = pipe.train_matrix(data, ["train-a", "train-b"])
    np.testing.assert_allclose(stats["mean"], x.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["std"], x.std(0), rtol=1e-9)
    assert stats["count"] == len(x) and sorted(stats["splits"]) == ["train-a", "train-b"]
    x_a = pipe.train_matrix(data, ["train-a"])
    assert np.abs(np.asarray(stats["mean"]) - x_a.mean(0)).max() > 1e-6

    out_cmn = tmp_path / "s_cmn"
    pipe.build(data, out_cmn, train="train-a,train-b", test="", min_shards=2, cmn=True)
    cmn_stats = json.loads((out_cmn / "stats.json").read_text())
    parts = [pipe.raw_features(data, s, u).astype(np.float64) for s in ("train-a", "train-b")
             for u in pipe.raw_ids(data, s)]
    xc = np.concatenate([p - p.mean(0) for p in parts])
    assert cmn_stats["cmn"] is True
    np.testing.assert_allclose(cmn_stats["mean"], xc.mean(0), atol=1e-9)   # ~0 by construction
    np.testing.assert_allclose(cmn_stats["std"], xc.std(0), rtol=1e-9)
    assert np.abs(np.asarray(cmn_stats["std"]) - x.std(0)).max() > 1e-3
    for split in ("train-a", "train-b", "dev-clean"):
        check_round_trip(pipe, data, out_cmn, split, xc.mean(0), xc.std(0), labelled=True, cmn=True)


def test_constant_dimension_is_centred_not_blown_up(pipe, tmp_path):
    rng = np.random.default_rng(8)
    data = tmp_path / "data"
    for i in range(5):
        x = pipe.random_feats(rng, 50 + i)
        x[:, 4] = 3.25
        pipe.write_utterance(data, "train", f"u{i}", x, good_transcript(rng, 50))
    pipe.build(data, tmp_path / "s", train="train", dev="", test="")
    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["std"][4] == 1.0 and stats["mean"][4] == pytest.approx(3.25)
    _, per_shard = pipe.read_split(tmp_path / "s", "train")
    for samples in per_shard:
        for _, f, _ in samples:
            assert np.all(f[:, 4] == 0) and np.isfinite(f).all()


def test_extreme_dev_values_stay_finite_in_float16(pipe, tmp_path):
    """A finite feature far outside the training range must not become inf in the float16 shard."""
    rng = np.random.default_rng(8)
    data = tmp_path / "data"
    for i in range(5):
        x = pipe.random_feats(rng, 50)
        x[:, 0] = -20 + 1e-3 * rng.normal(size=50)          # training std ~1e-3
        pipe.write_utterance(data, "train", f"u{i}", x, good_transcript(rng, 50))
    x = pipe.random_feats(rng, 50)
    x[10, 0] = 9e3              # within the bound (1e4); normalized ~9e6, beyond float16's 65504
    pipe.write_utterance(data, "dev", "huge", x, good_transcript(rng, 50))
    pipe.build(data, tmp_path / "s", train="train", dev="dev", test="")
    _, per_shard = pipe.read_split(tmp_path / "s", "dev")
    (key, f, _), = [s for samples in per_shard for s in samples]
    assert np.isfinite(f).all()
    assert f[10, 0] == np.finfo(np.float16).max


# ------------------------------------------------------------------------------ keys

ODD_IDS = ["plain-1", "with.dot", "two.dots.here", "with space", "ünïcödé-ïd", "日本語", "with_dot", "a_b_2",
           "a_b", "a.b", "x.y.z w"]


def test_odd_ids_get_unique_dot_free_keys(pipe, tmp_path):
    rng = np.random.default_rng(6)
    data = tmp_path / "data"
    # lengths chosen so that in shard order "a_b_2" < "a_b" < "a.b": the collision of "a.b" with "a_b"
    # must not produce the key "a_b_2" a second time
    frames = {u: 60 + 3 * i for i, u in enumerate(ODD_IDS)}
    frames.update({"a_b_2": 20, "a_b": 21, "a.b": 22})
    for u in ODD_IDS:
        pipe.write_utterance(data, "train", u, pipe.random_feats(rng, frames[u]), good_transcript(rng, frames[u]))
        pipe.write_utterance(data, "test", u, pipe.random_feats(rng, frames[u]))
    pipe.build(data, tmp_path / "s", train="train", dev="", test="test", min_shards=2)
    x = pipe.train_matrix(data, ["train"])
    for split, labelled in (("train", True), ("test", False)):
        m, seen = check_round_trip(pipe, data, tmp_path / "s", split, x.mean(0), x.std(0), labelled)
        assert sorted(m.ids) == sorted(ODD_IDS) and sorted(seen) == sorted(ODD_IDS)
        assert len(set(m.keys)) == len(m.keys)
        for k in m.keys:
            assert "." not in k and k.isascii() and k
        check_manifest_matches_tars(pipe, tmp_path / "s", split)
        with tarfile.open(m.shard_paths()[0]) as tar:
            names = tar.getnames()
        assert all(n.count(".") == 2 for n in names)          # <key>.feats.npy / <key>.labels.npy
    res = CliRunner().invoke(cli_main, ["shards", "--verify", "--data", str(data), "--shards", str(tmp_path / "s"),
                                        "--train", "train", "--dev", "", "--test", "test"])
    assert res.exit_code == 0, res.output


def test_make_keys_unique_for_colliding_ids():
    ids = ["a_b_2", "a_b", "a.b", "a b", "a_b_3", "a-b", "a_b_2_2"]
    keys = make_keys(ids)
    assert len(keys) == len(set(keys)) == len(ids)
    assert keys[:2] == ["a_b_2", "a_b"]                     # clean ids keep their name
    assert Counter(k.count(".") for k in keys) == Counter({0: len(ids)})


def test_write_tar_reports_the_offsets_tarfile_reads_back(tmp_path):
    from pipeline.shardformat import member_offsets, write_tar
    members = [("a.feats.npy", b"x" * 700), ("a.labels.npy", b"y" * 512), ("b" * 120 + ".feats.npy", b"z" * 3),
               ("\u00e9t\u00e9.labels.npy", b"")]            # a long and a non-ASCII name get PAX headers
    written = write_tar(tmp_path / "t.tar", members)
    assert written == member_offsets(tmp_path / "t.tar")
    data = (tmp_path / "t.tar").read_bytes()
    for name, blob in members:
        assert data[written[name]: written[name] + len(blob)] == blob
