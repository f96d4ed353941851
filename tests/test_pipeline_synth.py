"""The synthetic corpus generator, and property-based tests of input validation and planning."""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from phonerec.cli import main as cli_main
from pipeline.shardformat import make_keys
from pipeline.shards import cut_points, plan_order
from corpora.random import FRAMES_PER_S, generate, sample_durations, utterance
from pipeline.npyfile import MAX_ABS_FEATURE, UtteranceError, load_features
from pipeline.validate import load_transcript
from pipeline.vocab import EOS, LABEL_SYMBOLS, SOS, SYMBOL_INDEX, VOCAB, ctc_min_frames


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


SMALL = {"train-clean-100": 24, "dev-clean": 6, "test-clean": 5}


# ------------------------------------------------------------------------------ synth corpus

def test_synth_deterministic_and_worker_independent(tmp_path):
    s1 = generate(tmp_path / "a", SMALL, seed=7, workers=1, progress=False)
    s2 = generate(tmp_path / "b", SMALL, seed=7, workers=1, progress=False)
    s3 = generate(tmp_path / "c", SMALL, seed=7, workers=2, progress=False)
    a = tree_digest(tmp_path / "a")
    assert len(a) == 24 * 2 + 6 * 2 + 5
    assert a == tree_digest(tmp_path / "b") == tree_digest(tmp_path / "c")
    assert s1 == s2 == s3
    generate(tmp_path / "d", SMALL, seed=8, workers=1, progress=False)
    d = tree_digest(tmp_path / "d")
    assert set(d.values()).isdisjoint(v for k, v in a.items() if "/mfcc/" in k)


def test_synth_corpus_layout_and_transcripts(pipe, tiny_corpus):
    summary_frames = 0
    for split, n in pipe.TINY_SPLITS.items():
        ids = pipe.raw_ids(tiny_corpus, split)
        assert len(ids) == n and all(re.fullmatch(r"\d+-\d+-\d{4}", u) for u in ids)
        labelled = split != pipe.TEST
        assert (tiny_corpus / split / "transcript").is_dir() is labelled
        for uid in ids:
            x = pipe.raw_features(tiny_corpus, split, uid)
            assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 15 and np.isfinite(x).all()
            assert 1 * FRAMES_PER_S <= len(x) <= 35 * FRAMES_PER_S
            summary_frames += len(x)
            if not labelled:
                continue
            syms = np.load(tiny_corpus / split / "transcript" / f"{uid}.npy").tolist()
            assert syms[0] == SOS and syms[-1] == EOS
            body = syms[1:-1]
            assert body and set(body) <= LABEL_SYMBOLS
            assert body[0] == body[-1] == "[SIL]"
            assert all(a != b for a, b in zip(body, body[1:]))
            assert ctc_min_frames([SYMBOL_INDEX[s] for s in body]) <= len(x)
            assert 4 <= len(x) / len(body) <= 16            # ~6-14 frames per phoneme
    # features are offset and scaled like raw MFCCs, so normalization has something to do
    x = pipe.train_matrix(tiny_corpus, [pipe.TRAIN])
    assert np.abs(x.mean(0)).max() > 5 and x.std(0).max() > 5


@pytest.mark.parametrize("frames", [1, 2, 3, 5, 8, 13, 20, 28, 29, 37, 61, 100, 3500])
def test_synth_utterance_is_ctc_feasible(frames):
    x, labels = utterance(3, 0, frames, frames)
    assert x.shape == (max(frames, 3), 15)
    assert labels[0] == SOS and labels[-1] == EOS and len(labels) >= 3
    idx = [SYMBOL_INDEX[s] for s in labels[1:-1]]
    assert ctc_min_frames(idx) <= len(x)
    if frames >= 29:                                    # from 3 phonemes on: [SIL] ... [SIL], no repeats
        assert labels[1] == labels[-2] == "[SIL]"
        assert all(a != b for a, b in zip(idx, idx[1:]))


def test_sample_durations_librispeech_like():
    d = sample_durations(np.random.default_rng(0), 2000)
    assert d.shape == (2000,)
    assert d.min() >= 1.0 and d.max() <= 35.0
    assert 10.0 <= np.median(d) <= 16.0
    assert 0.5 <= np.mean((d >= 10) & (d <= 16)) <= 0.9         # most, not all
    assert (d < 5).sum() >= 20 and (d > 20).sum() >= 20         # real tails on both sides
    d2 = sample_durations(np.random.default_rng(1), 2000)
    assert not np.array_equal(d, d2)
    np.testing.assert_array_equal(d, sample_durations(np.random.default_rng(0), 2000))


def test_synth_cli(tmp_path):
    out = tmp_path / "data"
    res = CliRunner().invoke(cli_main, ["synth-corpus", "--data", str(out), "--split", "train-clean-100=6",
                                        "--split", "test-clean=3", "--seed", "4", "--workers", "1",
                                        "--nested-transcripts"])
    assert res.exit_code == 0, res.output
    assert "train-clean-100: 6 utterances" in res.output and "(unlabelled)" in res.output
    assert len(list((out / "train-clean-100" / "transcript" / "raw").glob("*.npy"))) == 6
    assert not (out / "test-clean" / "transcript").exists()
    generate(tmp_path / "ref", {"train-clean-100": 6, "test-clean": 3}, seed=4, nested_transcripts=True,
             workers=1, progress=False)
    assert tree_digest(out) == tree_digest(tmp_path / "ref")
    res = CliRunner().invoke(cli_main, ["synth-corpus", "--data", str(out), "--split", "train-clean-100"])
    assert res.exit_code != 0 and "NAME=COUNT" in res.output


# ------------------------------------------------------------------------------ property tests

PROPS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = [np.float16, np.float32, np.float64, np.longdouble, ">f4", ">f8", np.int8, np.int32, np.int64,
          np.uint8, np.bool_, np.complex64]


@st.composite
def feature_files(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    t = draw(st.integers(0, 12))
    shape = draw(st.sampled_from([(t, 15), (t, 15), (t, 15), (t,), (t, 13), (15, t), (t, 15, 1), ()]))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=min(dtype.itemsize * 8, 64))
        if draw(st.booleans()):              # mostly finite, ordinary magnitudes
            elements = st.floats(-1e4, 1e4, width=min(dtype.itemsize * 8, 64))
        arr = draw(hnp.arrays(dtype, shape, elements=elements))
    else:
        arr = draw(hnp.arrays(dtype, shape))
    buf = io.BytesIO()
    np.save(buf, arr)
    data = buf.getvalue()
    cut = draw(st.one_of(st.none(), st.integers(0, len(data) - 1)))
    return arr, data if cut is None else data[:cut], cut is not None


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prop")


def _write(scratch: Path, data: bytes) -> Path:
    p = scratch / f"{uuid.uuid4().hex}.npy"
    p.write_bytes(data)
    return p


@PROPS
@given(feature_files())
def test_load_features_returns_clean_array_or_reason(scratch, case):
    arr, data, truncated = case
    path = _write(scratch, data)
    try:
        x = load_features(path)
    except UtteranceError as exc:
        assert str(exc)
        ok = False
    else:
        ok = True
        assert x.dtype == np.float32 and x.ndim == 2 and x.shape[1] == 15 and x.shape[0] >= 1
        assert np.isfinite(x).all() and x.flags.c_contiguous
        np.testing.assert_array_equal(x, arr.astype(np.float32))
    with np.errstate(over="ignore"):
        usable = (not truncated and arr.dtype.kind == "f" and arr.ndim == 2 and arr.shape[1] == 15
                  and arr.shape[0] >= 1 and bool(np.isfinite(arr.astype(np.float32)).all())
                  and float(np.abs(arr.astype(np.float32)).max(initial=0)) <= MAX_ABS_FEATURE)
    assert ok == usable                        # nothing usable is rejected, nothing else gets through


SYMBOLS = st.one_of(st.sampled_from([*VOCAB, "[SOS]", "[EOS]", "aa", "SIL", "[sil]", " AA"]), st.text(max_size=6))


@PROPS
@given(st.lists(SYMBOLS, max_size=25), st.booleans(), st.booleans())
def test_load_transcript_returns_indices_or_reason(scratch, body, framed, as_object):
    syms = [SOS, *body, EOS] if framed else body
    arr = np.array(syms, dtype=object) if as_object else np.asarray(syms)
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=as_object)
    path = _write(scratch, buf.getvalue())
    stored = [str(s) for s in arr.tolist()]    # unicode arrays drop trailing NULs
    valid = (len(stored) >= 3 and arr.dtype.kind in "UO" and stored[0] == SOS and stored[-1] == EOS
             and all(s in LABEL_SYMBOLS for s in stored[1:-1]))
    try:
        labels = load_transcript(path)
    except UtteranceError as exc:
        assert not valid, f"valid transcript rejected: {exc}"
    else:
        assert valid
        assert labels.dtype == np.uint8
        assert labels.tolist() == [SYMBOL_INDEX[s] for s in stored[1:-1]]
        assert all(0 < i < len(VOCAB) - 2 for i in labels)


@PROPS
@given(st.binary(max_size=300), st.sampled_from(["features", "transcript"]))
def test_arbitrary_bytes_never_crash(scratch, data, what):
    path = _write(scratch, data)
    loader = load_features if what == "features" else load_transcript
    try:
        loader(path)
    except UtteranceError:
        pass


@PROPS
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=40, unique=True))
def test_make_keys_unique_dot_free_ascii(ids):
    keys = make_keys(ids)
    assert len(keys) == len(ids) == len(set(keys))
    for uid, key in zip(ids, keys):
        assert key and key.isascii() and re.fullmatch(r"[A-Za-z0-9_\-]+", key)
        if re.fullmatch(r"[A-Za-z0-9_\-]+", uid) and uid not in keys[:ids.index(uid)]:
            assert key == uid                  # clean, not yet taken: kept as it is


@PROPS
@given(st.lists(st.integers(1, 60), min_size=0, max_size=80), st.integers(0, 2**32 - 1), st.integers(1, 12),
       st.floats(100, 5000))
def test_plan_and_cut_points(frames, seed, min_shards, target):
    frames = np.asarray(frames, dtype=np.int64)
    order = plan_order(frames, seed)
    assert sorted(order.tolist()) == list(range(len(frames)))
    assert np.all(np.diff(frames[order]) >= 0)
    sizes = frames[order] * 30
    cuts = cut_points(sizes, target, min_shards)
    assert cuts[0] == 0 and cuts[-1] == len(frames)
    assert np.all(np.diff(cuts) > 0)
    if len(frames):                          # at least min_shards (or one per utterance), more if large
        want = min(max(int(np.ceil(sizes.sum() / target)), min_shards), len(frames))
        assert len(cuts) - 1 == want
