"""Hostile and damaged inputs to the .npy readers (pipeline/npyfile.py, validate.py), end to end through a build.

Case 1: a transcript holding a pickle runs no code (restricted unpickler), and is rejected.
Case 9: a header claiming an absurd shape is a rejection, not an OverflowError/MemoryError.
Case 13: one absurd finite feature value is a rejection, so the statistics stay true.
Also: `|S` (bytes) transcripts are read (ASCII), `<U` ones keep working.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pathlib
import pickle
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import npyfile
from pipeline.npyfile import UtteranceError, load_features, npy_frames
from pipeline.validate import load_transcript
from pipeline.vocab import SYMBOL_INDEX

ROOT = Path(__file__).resolve().parents[1]
PROPS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
GOOD = ["[SOS]", "[SIL]", "AA", "B", "K", "IY", "[SIL]", "[EOS]"]
GOOD_LABELS = [SYMBOL_INDEX[s] for s in GOOD[1:-1]]


def npy_with_header(descr, shape, payload: bytes, fortran=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue() + payload


def object_npy(obj, shape=(3,), protocol=4) -> bytes:
    """A .npy whose header says object array and whose data part is `obj` pickled (what a hostile
    or damaged file can hold: np.load(allow_pickle=True) would unpickle whatever is there)."""
    return npy_with_header("|O", shape, pickle.dumps(obj, protocol=protocol))


def good_corpus(pipe, data, rng, n_train=8, n_dev=3):
    for i in range(n_train):
        pipe.write_utterance(data, "train", f"good-{i:02d}", pipe.random_feats(rng, 40 + 7 * i), GOOD)
    for i in range(n_dev):
        pipe.write_utterance(data, "dev", f"dev-{i:02d}", pipe.random_feats(rng, 30 + 5 * i), GOOD)
    return [f"good-{i:02d}" for i in range(n_train)]


def kept(pipe, shards, split):
    """{uid: (normalized float16 features, labels)} read back from the shards."""
    m, per_shard = pipe.read_split(shards, split)
    by_key = dict(zip(m.keys, m.ids))
    return {by_key[k]: (f, lab) for samples in per_shard for k, f, lab in samples}


def reasons(pipe, shards):
    return {Path(r["file"]).name: r["reason"] for r in pipe.rejected_rows(shards)}


# Process-wide audit hook (hooks cannot be removed): while `AUDIT` is armed it records every event
# that imports, executes or starts anything, and every file opened. ("compile" is not watched: the
# .npy header is parsed with ast.literal_eval, which compiles but never executes.)
AUDIT: dict = {"armed": False, "events": []}
WATCHED = ("import", "exec", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "subprocess.Popen", "pickle.find_class", "ctypes", "builtins.input", "os.remove", "os.rename",
           "shutil", "socket", "urllib", "webbrowser", "open")


def _hook(event, args):
    if AUDIT["armed"] and event.startswith(WATCHED):
        AUDIT["events"].append((event, args[0] if args else None))


sys.addaudithook(_hook)


def load_audited(loader, path):
    """(result or UtteranceError, audit events other than opening `path` itself)."""
    AUDIT["events"].clear()
    AUDIT["armed"] = True
    try:
        try:
            out = loader(path)
        except UtteranceError as exc:
            out = exc
    finally:
        AUDIT["armed"] = False
    others = [e for e in AUDIT["events"] if not (e[0] == "open" and str(e[1]) == str(path))]
    return out, others


# ------------------------------------------------------------------------ case 1: pickled transcripts

class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class WritesFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.write_text, (pathlib.Path(self.marker), "pwned")


class Execs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_case1_pickled_transcript_runs_no_code(pipe, tmp_path):
    rng = np.random.default_rng(1)
    data, out = tmp_path / "data", tmp_path / "shards"
    good = good_corpus(pipe, data, rng)
    # a normal object array of str (some releases store transcripts so) and one of np.str_: kept
    for uid, arr in (("obj-str", np.array(GOOD, dtype=object)),
                     ("obj-npstr", np.array([np.str_(s) for s in GOOD], dtype=object))):
        pipe.write_npy(data / "train" / "mfcc" / f"{uid}.npy", pipe.random_feats(rng, 50))
        pipe.write_npy(data / "train" / "transcript" / f"{uid}.npy", arr, allow_pickle=True)
    assert isinstance(np.load(data / "train" / "transcript" / "obj-npstr.npy", allow_pickle=True)[1], np.str_)
    markers = {}
    for uid, payload in (("evil-system", RunsShell), ("evil-write", WritesFile), ("evil-exec", Execs)):
        marker = tmp_path / f"MARKER-{uid}"
        markers[uid] = marker
        pipe.write_npy(data / "train" / "mfcc" / f"{uid}.npy", pipe.random_feats(rng, 50))
        # inside an object array, as np.save writes it, and as the whole pickle (dev split)
        arr = np.array(["[SOS]", payload(marker), "[EOS]"], dtype=object)
        pipe.write_npy(data / "train" / "transcript" / f"{uid}.npy", arr, allow_pickle=True)
        pipe.write_npy(data / "dev" / "mfcc" / f"whole-{uid}.npy", pipe.random_feats(rng, 50))
        (data / "dev" / "transcript" / f"whole-{uid}.npy").write_bytes(object_npy(payload(marker), shape=()))

    pipe.build(data, out, train="train", dev="dev", test="", min_shards=2)

    assert not [m for m in markers.values() if m.exists()], "a pickled transcript ran code during the build"
    rows = pipe.rejected_rows(out)
    assert sorted((r["split"], r["utterance"]) for r in rows) == sorted(
        [("train", u) for u in markers] + [("dev", f"whole-{u}") for u in markers])
    names = {"evil-system": f"{os.system.__module__}.system", "evil-write": "pathlib.Path.write_text",
             "evil-exec": "builtins.exec"}
    for r in rows:
        assert r["file"].endswith(f"transcript/{r['utterance']}.npy")
        assert r["reason"] == (f"transcript holds a pickle that would import {names[r['utterance'].replace('whole-', '')]}; "
                               "refused (only arrays of strings are read)"), r
    train = kept(pipe, out, "train")
    assert sorted(train) == sorted([*good, "obj-str", "obj-npstr"])
    for uid in ("obj-str", "obj-npstr", *good):
        assert train[uid][1].tolist() == GOOD_LABELS, uid


def test_case1_pipeline_never_loads_with_allow_pickle():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "pipeline").rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if "allow_pickle=True" in line.replace(" ", "") and not line.lstrip().startswith("#")]
    assert offenders == []


def _reduce_to(fn, *args):
    class R:
        def __reduce__(self):
            return fn, args
    return R()


def _hostile_objects(marker):
    import collections
    import datetime
    import decimal
    import fractions
    import functools
    import operator
    return [
        {"a": 1}, {1, 2}, 3 + 4j, range(3), slice(1, 2), bytearray(b"xy"), ("[SOS]", "[EOS]"), ["[SOS]", "[EOS]"],
        "[SOS] AA [EOS]", None, 1.5, collections.OrderedDict(a=1), datetime.date(2020, 1, 1),
        decimal.Decimal("1.5"), fractions.Fraction(1, 3), np.float64(1.0), np.int64(3), np.dtype("f4"),
        np.arange(3.0), np.array([1, 2, 3], dtype=object), np.ma.array(["[SOS]", "AA", "[EOS]"]),
        np.random.default_rng(0), functools.partial(os.system, "true"), operator.attrgetter("x"),
        np.array(["[SOS]", {"x": 1}, "[EOS]"], dtype=object),
        _reduce_to(os.system, f"touch {shlex.quote(str(marker))}"),
        _reduce_to(np.save, str(marker), np.zeros(1)),
        _reduce_to(eval, "__import__('os')"),
        _reduce_to(np.lib.format.open_memmap, str(marker), "w+", "f4", (1,)),
        _reduce_to(np.array, ["[SOS]", "AA", "[EOS]"]),            # numpy, but not one of the admitted names
    ]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_case1_random_pickles_of_other_objects_are_refused_never_executed(tmp_path, protocol):
    marker = tmp_path / "MARKER"
    for i, obj in enumerate(_hostile_objects(marker)):
        path = tmp_path / f"t{i}.npy"
        path.write_bytes(object_npy(obj, protocol=protocol))
        out, events = load_audited(load_transcript, path)
        assert isinstance(out, UtteranceError), (obj, out)
        assert events == [], (obj, events)
        assert not marker.exists(), obj
        assert not any(p.name.startswith("MARKER") for p in tmp_path.iterdir())


@PROPS
@given(data=st.data())
def test_case1_fuzzed_object_array_pickles_never_import_or_crash(tmp_path_factory, data):
    """Random byte edits of real object-array pickles: indices or a reason, nothing imported/executed."""
    base = np.array(data.draw(st.sampled_from([GOOD, ["[SOS]", "AA", "[EOS]"]])), dtype=object)
    if data.draw(st.booleans()):
        base = np.array([np.str_(s) for s in base], dtype=object)
    protocol = data.draw(st.sampled_from([0, 2, 3, 4, 5]))
    raw = bytearray(object_npy(base, shape=base.shape, protocol=protocol))
    start = raw.index(b"\n") + 1
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(start, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fuzz") / "t.npy"
    path.write_bytes(bytes(raw))
    out, events = load_audited(load_transcript, path)
    assert events == [], events
    assert isinstance(out, (UtteranceError, np.ndarray))


def test_case1_object_array_pickles_of_all_protocols_are_read(tmp_path):
    arr = np.array([np.str_(s) if i % 2 else s for i, s in enumerate(GOOD)], dtype=object)
    for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.npy"
        path.write_bytes(object_npy(arr, shape=arr.shape, protocol=protocol))
        out, events = load_audited(load_transcript, path)
        assert events == [], (protocol, events)
        assert not isinstance(out, Exception), (protocol, out)
        assert out.tolist() == GOOD_LABELS


# ------------------------------------------------------------------------ case 9: absurd headers

HUGE = 10 ** 20


def test_case9_absurd_header_shape_is_rejected_not_a_crash(pipe, tmp_path):
    rng = np.random.default_rng(9)
    data, out = tmp_path / "data", tmp_path / "shards"
    good = good_corpus(pipe, data, rng)
    bad = {   # uid: (descr, shape, fortran, expected reason (or part of it))
        "huge": ("<f4", (HUGE, 15), False,
                 f"header claims [{HUGE}, 15] float32 = {HUGE * 60} bytes but the file holds 64"),
        "huge-fortran": ("<f4", (HUGE, 15), True,
                         f"header claims [{HUGE}, 15] float32 = {HUGE * 60} bytes but the file holds 64"),
        "int64-wrap": ("<f4", (2 ** 62, 16), False,     # np.prod in int64 wraps this to 0
                       f"header claims [{2 ** 62}, 16] float32 = {2 ** 68} bytes but the file holds 64"),
        "negative": ("<f4", (-4, -15), False, "it claims shape [-4, -15], with a negative dimension"),
        "many-dims": ("<f4", (1,) * 40, False, "it claims 40 dimensions"),
        "empty-huge": ("<f4", (HUGE, 0), False, f"it claims shape [{HUGE}, 0], a dimension beyond 2**40"),
    }
    for uid, (descr, shape, fortran, _) in bad.items():
        path = data / "train" / "mfcc" / f"{uid}.npy"
        path.write_bytes(npy_with_header(descr, shape, bytes(64), fortran))
        pipe.write_npy(data / "train" / "transcript" / f"{uid}.npy", np.asarray(GOOD))
    # transcripts with absurd headers too: unicode and object
    for uid, descr in (("t-huge-unicode", "<U5"), ("t-huge-object", "|O")):
        pipe.write_npy(data / "train" / "mfcc" / f"{uid}.npy", pipe.random_feats(rng, 50))
        (data / "train" / "transcript" / f"{uid}.npy").write_bytes(npy_with_header(descr, (HUGE,), bytes(64)))

    pipe.build(data, out, train="train", dev="dev", test="", min_shards=2)     # no OverflowError/MemoryError

    for uid in bad:      # the header frame count (sorting, store capacity) is never absurd
        assert npy_frames(data / "train" / "mfcc" / f"{uid}.npy") == 0, uid
    got = reasons(pipe, out)
    assert set(got) == {f"{u}.npy" for u in [*bad, "t-huge-unicode", "t-huge-object"]}
    for uid, (*_, want) in bad.items():
        assert want in got[f"{uid}.npy"], (uid, got[f"{uid}.npy"])
    assert got["huge.npy"] == ("truncated feature file or damaged header: "
                               f"header claims [{HUGE}, 15] float32 = {HUGE * 60} bytes but the file holds 64")
    assert f"header claims [{HUGE}] <U5 = {HUGE * 20} bytes but the file holds 64" in got["t-huge-unicode.npy"]
    assert f"it claims [{HUGE}] objects but the file holds 64 bytes" in got["t-huge-object.npy"]
    assert sorted(kept(pipe, out, "train")) == good
    assert sorted(kept(pipe, out, "dev")) == [f"dev-{i:02d}" for i in range(3)]


def test_case9_header_checks_keep_real_files_readable(tmp_path):
    """The size check lets every well-formed file through, Fortran order included."""
    x = np.random.default_rng(0).normal(size=(33, 15)).astype(np.float32)
    for name, arr in (("c", x), ("f", np.asfortranarray(x)), ("be", x.astype(">f8")), ("f16", x.astype(np.float16))):
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        assert npy_frames(path) == 33
        np.testing.assert_array_equal(load_features(path), arr.astype(np.float32))
    path = tmp_path / "short.npy"
    path.write_bytes((tmp_path / "c.npy").read_bytes()[:-4])
    with pytest.raises(UtteranceError, match="truncated feature file"):
        load_features(path)
    assert npy_frames(path) == 0


# ------------------------------------------------------------------------ case 13: absurd values

def test_case13_absurd_feature_value_is_rejected_and_statistics_stay_true(pipe, tmp_path):
    rng = np.random.default_rng(13)
    data, out = tmp_path / "data", tmp_path / "shards"
    good = good_corpus(pipe, data, rng)
    x = pipe.random_feats(rng, 60)
    x[5, 4] = 3e38
    pipe.write_utterance(data, "train", "bad-3e38", x, GOOD)
    y = pipe.random_feats(rng, 60)
    y[7, 2] = 0.75
    y.view(np.uint32)[7, 2] ^= np.uint32(1 << 30)         # one flipped exponent bit: 0.75 * 2**128
    assert 1e38 < y[7, 2] < np.inf
    pipe.write_utterance(data, "train", "bad-bitflip", y, GOOD)

    pipe.build(data, out, train="train", dev="dev", test="", min_shards=2)

    got = reasons(pipe, out)
    assert got == {
        "bad-3e38.npy": "features hold values of magnitude up to 3.0e+38 in 1 frame(s) (dimension 4): "
                        "beyond ±1e4, which no MFCC reaches (damaged file?)",
        "bad-bitflip.npy": "features hold values of magnitude up to 2.6e+38 in 1 frame(s) (dimension 2): "
                           "beyond ±1e4, which no MFCC reaches (damaged file?)",
    }
    train_ids = good
    want = np.concatenate([pipe.raw_features(data, "train", u).astype(np.float64) for u in train_ids])
    stats = json.loads((out / "stats.json").read_text())
    np.testing.assert_allclose(stats["mean"], want.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], want.std(axis=0), rtol=1e-6)
    for split, ids in (("train", train_ids), ("dev", [f"dev-{i:02d}" for i in range(3)])):
        shards = kept(pipe, out, split)
        assert sorted(shards) == sorted(ids)
        feats = np.concatenate([f.astype(np.float64) for f, _ in shards.values()])
        assert (feats.std(axis=0) > 0.05).all(), (split, feats.std(axis=0))    # no dimension collapsed
        for uid, (f, _) in shards.items():
            raw = pipe.raw_features(data, split, uid).astype(np.float64)
            np.testing.assert_allclose(f.astype(np.float64), (raw - stats["mean"]) / stats["std"],
                                       rtol=2.0 ** -10, atol=1e-3)


def test_case13_bound_is_inclusive_and_reports_every_dimension(tmp_path):
    from pipeline.npyfile import MAX_ABS_FEATURE
    assert MAX_ABS_FEATURE == 1e4
    x = np.zeros((10, 15), np.float32)
    x[0, 0], x[1, 14] = MAX_ABS_FEATURE, -MAX_ABS_FEATURE
    np.save(tmp_path / "ok.npy", x)
    np.testing.assert_array_equal(load_features(tmp_path / "ok.npy"), x)
    x[2, 3], x[2, 9], x[4, 3] = 2e4, -1e5, np.nextafter(np.float32(MAX_ABS_FEATURE), np.float32(np.inf))
    np.save(tmp_path / "bad.npy", x.astype(np.float64))
    with pytest.raises(UtteranceError) as err:
        load_features(tmp_path / "bad.npy")
    assert str(err.value) == ("features hold values of magnitude up to 1.0e+05 in 2 frame(s) (dimensions 3, 9): "
                              "beyond ±1e4, which no MFCC reaches (damaged file?)")


# ------------------------------------------------------------------------ also: bytes transcripts

def test_also_case_bytes_and_unicode_transcripts(pipe, tmp_path):
    rng = np.random.default_rng(4)
    data, out = tmp_path / "data", tmp_path / "shards"
    good = good_corpus(pipe, data, rng, n_train=4)
    variants = {
        "bytes-S": np.array([s.encode() for s in GOOD]),
        "unicode-U": np.array(GOOD),
        "unicode-bigendian": np.array(GOOD).astype(">U5"),
        "object-bytes": np.array([s.encode() for s in GOOD], dtype=object),
        "bytes-nonascii": np.array([b"[SOS]", b"AA", "\u00c9".encode(), b"[EOS]"]),
        "bytes-unknown": np.array([b"[SOS]", b"AA", b"XX", b"[EOS]"]),
    }
    assert variants["bytes-S"].dtype == np.dtype("S5")
    for uid, arr in variants.items():
        pipe.write_npy(data / "train" / "mfcc" / f"{uid}.npy", pipe.random_feats(rng, 50))
        pipe.write_npy(data / "train" / "transcript" / f"{uid}.npy", arr, allow_pickle=arr.dtype.hasobject)

    pipe.build(data, out, train="train", dev="dev", test="", min_shards=2)

    assert reasons(pipe, out) == {
        "bytes-nonascii.npy": "transcript holds a byte string that is not ASCII: b'\\xc3\\x89'",
        "bytes-unknown.npy": "transcript: unknown symbol(s) 'XX' (not in the 40-phoneme vocabulary)",
    }
    train = kept(pipe, out, "train")
    assert sorted(train) == sorted([*good, "bytes-S", "unicode-U", "unicode-bigendian", "object-bytes"])
    for uid, (_, labels) in train.items():
        assert labels.tolist() == GOOD_LABELS, uid


def test_also_case_validate_module_has_no_unrestricted_loads():
    for name in ("npyfile.py", "validate.py"):
        code = [line.split("#")[0] for line in (ROOT / "pipeline" / name).read_text().splitlines()]
        assert not [c for c in code if "np.load(" in c or "pickle.load(" in c or "pickle.loads(" in c], name
    assert issubclass(npyfile._StringArrayUnpickler, pickle.Unpickler)  # noqa: SLF001
