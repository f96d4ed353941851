"""Prediction, evaluation and transcription with a (briefly) trained checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from phonerec.cli import main
from pipeline import manifest as mf
from pipeline.vocab import CODES
from tests.conftest import build_shards, raw_ids
from tests.helpers import TEST, cli
from training.checkpoint import Checkpoint


def _cli(*args) -> str:
    return cli(*args).output


def _read_csv(path: Path) -> list[tuple[int, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["index", "label"]
    return [(int(i), lab) for i, lab in rows[1:]]


def _shuffle_shards(shards_dir: Path, split: str, seed: int) -> None:
    """Rewrite a split's manifest with its shards in another order (utterance blocks moved along)."""
    m = mf.load(shards_dir, split)
    start = m.shard_start
    perm = np.random.default_rng(seed).permutation(len(m.shards))
    assert not (perm == np.arange(len(perm))).all()
    rows = np.concatenate([np.arange(start[s], start[s + 1]) for s in perm])
    m.shards = [m.shards[s] for s in perm]
    m.ids = [m.ids[r] for r in rows]
    m.keys = [m.keys[r] for r in rows]
    m.frames, m.label_lens, m.index = m.frames[rows], m.label_lens[rows], m.index[rows]
    mf.save(m, shards_dir)


def test_submission_has_every_test_utterance_in_original_order(tiny_corpus, tiny_shards, trained, tmp_path):
    shuffled = tmp_path / "shards"
    shutil.copytree(tiny_shards, shuffled)
    _shuffle_shards(shuffled, TEST, seed=3)
    out = {}
    for name, shards in (("plain", tiny_shards), ("shuffled", shuffled)):
        res = tmp_path / name
        _cli("predict", "--shards", str(shards), "--weights", str(trained), "--results", str(res),
             "--beam-width", "0", "--workers", "0", "--quiet")
        out[name] = _read_csv(res / "submission.csv")
    ids = raw_ids(tiny_corpus, TEST)
    assert [i for i, _ in out["plain"]] == list(range(len(ids)))
    assert out["plain"] == out["shuffled"]

    # Row k is test file k (sorted names): transcribing that file alone gives the same string.
    files = [str(tiny_corpus / TEST / "mfcc" / f"{u}.npy") for u in ids]
    printed = _cli("transcribe", "--weights", str(trained), "--beam-width", "0", *files).splitlines()
    assert [line.split("\t")[0] for line in printed] == [f"{u}.npy" for u in ids]
    assert [line.split("\t")[1] if "\t" in line else "" for line in printed] == [lab for _, lab in out["plain"]]


def test_beam_prediction_and_multirank_style_merge(tiny_shards, trained, tmp_path):
    _cli("predict", "--shards", str(tiny_shards), "--weights", str(trained), "--results", str(tmp_path),
         "--beam-width", "2", "--threads", "2", "--workers", "2", "--quiet")
    rows = _read_csv(tmp_path / "submission.csv")
    m = mf.load(tiny_shards, TEST)
    assert len(rows) == m.inputs == m.num_utterances
    allowed = set(CODES[1:-2])
    assert all(set(lab) <= allowed for _, lab in rows)


def test_evaluate_writes_per_utterance_tsv(tiny_shards, trained, tmp_path):
    _cli("evaluate", "--shards", str(tiny_shards), "--weights", str(trained), "--results", str(tmp_path),
         "--split", "dev-clean", "--beam-width", "2", "--workers", "0", "--quiet")
    summary = json.loads((tmp_path / "evaluate-dev-clean.json").read_text())
    with open(tmp_path / "evaluate-dev-clean.tsv", newline="") as fh:
        tsv = list(csv.DictReader(fh, delimiter="\t"))
    m = mf.load(tiny_shards, "dev-clean")
    assert len(tsv) == m.num_utterances
    dists = [int(r["greedy_distance"]) for r in tsv]
    assert summary["greedy_distance"] == pytest.approx(sum(dists) / len(dists))
    assert summary["phonemes"] == int(m.label_lens.sum())
    assert 0 < summary["greedy_per"] and summary["beam_per"] >= 0
    # per phoneme: every reference phoneme counted once; the confusion matrix drawn
    with open(tmp_path / "evaluate-dev-clean-phones.tsv", newline="") as fh:
        phones = list(csv.DictReader(fh, delimiter="\t"))
    assert sum(int(r["count"]) for r in phones) == summary["phonemes"]
    assert all(int(r["count"]) == int(r["correct"]) + int(r["substituted"]) + int(r["deleted"]) for r in phones)
    assert (tmp_path / "evaluate-dev-clean-confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_phone_scoring_by_hand():
    """Reference -ab- decoded -ac-, -a-; reference -a- decoded -ab-: b substituted once (by c),
    deleted once, inserted once; a and [SIL] always right."""
    from pipeline.vocab import F22
    from training import scoring
    index = {c: i for i, c in enumerate(F22.codes)}
    m = scoring.confusion([("-ab-", "-ac-"), ("-ab-", "-a-"), ("-a-", "-ab-")], F22.num_classes, index)
    rows = {r["phone"]: r for r in scoring.phone_rows(m, F22)}
    b, c, a = (F22.symbols[index[x]] for x in "bca")
    assert rows[b] == {"phone": b, "count": 2, "correct": 0, "substituted": 1, "deleted": 1, "inserted": 1,
                       "error_rate": 1.5, "confused_with": c}
    assert rows[a]["correct"] == rows[a]["count"] == 3 and rows["[SIL]"]["count"] == 6
    assert list(rows)[0] == b                                        # worst first


def test_mismatched_statistics_fail_clearly(tiny_corpus, trained, tmp_path):
    other = tmp_path / "other"
    # Different training data -> different normalization statistics.
    build_shards(tiny_corpus, other, train="dev-clean", dev="", test=TEST, min_shards=2)
    res = CliRunner().invoke(main, ["predict", "--shards", str(other), "--weights", str(trained),
                                    "--results", str(tmp_path), "--quiet"])
    assert res.exit_code != 0
    assert "other statistics" in res.output and "retrain" in res.output
    assert not (tmp_path / "submission.csv").exists()


def test_mismatched_vocabulary_and_missing_weights_fail_clearly(tiny_shards, trained, tmp_path):
    ck = Checkpoint.load(trained / "best.pt")
    ck.vocab = ck.vocab[:-1]
    ck.save(tmp_path / "bad.pt")
    res = CliRunner().invoke(main, ["predict", "--shards", str(tiny_shards), "--weights", str(tmp_path / "bad.pt"),
                                    "--results", str(tmp_path), "--quiet"])
    assert res.exit_code != 0 and "different vocabulary" in res.output
    res = CliRunner().invoke(main, ["predict", "--shards", str(tiny_shards), "--weights", str(tmp_path / "none"),
                                    "--results", str(tmp_path), "--quiet"])
    assert res.exit_code != 0 and "no checkpoint" in res.output


def test_transcribe_arpabet_and_posteriorgram(tiny_corpus, trained, tmp_path):
    f = sorted((tiny_corpus / TEST / "mfcc").glob("*.npy"))[0]
    png = tmp_path / "post.png"
    out = _cli("transcribe", "--weights", str(trained), "--arpabet", "--plot", str(png), "--beam-width", "2", str(f))
    name, _, symbols = out.splitlines()[0].partition("\t")
    assert name == f.name
    assert all(s in {"[SIL]", "NG", "F", "M", "AE", "R", "UW", "N", "IY", "AW", "V", "UH", "OW", "AA", "ER", "HH",
                     "Z", "K", "CH", "W", "EY", "ZH", "T", "EH", "Y", "AH", "B", "P", "TH", "DH", "AO", "G", "L",
                     "JH", "OY", "SH", "D", "AY", "S", "IH"} for s in symbols.split())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 13), np.float32))
    res = CliRunner().invoke(main, ["transcribe", "--weights", str(trained), str(bad)])
    assert res.exit_code != 0 and "[T, 15]" in res.output


def test_transcribe_audio_file_uses_the_corpus_feature_extraction(trained, tmp_path):
    sf = pytest.importorskip("soundfile", reason="the speech extra is not installed")
    pytest.importorskip("librosa", reason="the speech extra is not installed")
    from pipeline.features import mfcc_from_wav
    rng = np.random.default_rng(3)
    t = np.arange(int(1.2 * 22050)) / 22050                 # 1.2 s at another rate: resampled to 16 kHz
    audio = (0.3 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * t)) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    wav = tmp_path / "hello.wav"
    sf.write(str(wav), audio, 22050, subtype="FLOAT")
    feats = mfcc_from_wav(wav)
    assert feats.shape == (1 + int(1.2 * 16000) // 160, 15)
    npy = tmp_path / "hello.npy"
    np.save(npy, feats)
    out_wav = _cli("transcribe", "--weights", str(trained), "--beam-width", "3", str(wav))
    out_npy = _cli("transcribe", "--weights", str(trained), "--beam-width", "3", str(npy))
    assert out_wav.splitlines()[0].split("\t")[1] == out_npy.splitlines()[0].split("\t")[1]
    assert out_wav.startswith("hello.wav\t")
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    res = CliRunner().invoke(main, ["transcribe", "--weights", str(trained), str(bad)])
    assert res.exit_code == 1 and str(bad) in res.output and "unreadable audio" in res.output
    assert "Traceback" not in res.output


# ----------------------------------------------------------------------------- the phone LM commands

def _transcripts(shards, split) -> list[list[str]]:
    """Every transcript of a split, as symbols, read independently of training/phone_lm.py."""
    from tests.conftest import read_split
    m, per_shard = read_split(shards, split)
    return [[m.inventory.symbols[int(c)] for c in labels] for shard in per_shard for _, _, labels in shard]


def test_lm_command_estimates_on_the_training_transcripts(tiny_shards, tmp_path):
    from decoding.lm import read_arpa
    out = tmp_path / "lm" / "phones.arpa"
    text = _cli("lm", "--shards", str(tiny_shards), "--order", "3", "--out", str(out), "--quiet")
    assert f"wrote {out}: order 3" in text
    arpa = read_arpa(out)
    sentences = _transcripts(tiny_shards, "train-clean-100")
    bigrams = {tuple(s[i:i + 2]) for s in sentences for i in range(len(s) - 1)}
    assert arpa.order == 3 and bigrams <= set(arpa.ngrams[1])           # every seen bigram is listed
    assert set(arpa.ngrams[0]) >= {(p,) for s in sentences for p in s} | {("</s>",)}
    default = _cli("lm", "--shards", str(tiny_shards), "--order", "2", "--weights", str(tmp_path / "w"), "--quiet")
    assert (tmp_path / "w" / "phones-2gram.arpa").is_file() and "order 2" in default


def raw_ids_for(shards) -> list[str]:
    return mf.load(shards, TEST).ids


def test_a_bad_arpa_file_is_one_line_before_decoding(tiny_shards, trained, tmp_path, monkeypatch):
    from training import inference as tinf
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-0.5\tAA\n")                 # truncated
    monkeypatch.setattr(tinf, "greedy_decode", lambda *a, **k: pytest.fail("decoded"))
    r = CliRunner().invoke(main, ["evaluate", "--shards", str(tiny_shards), "--weights", str(trained), "--results",
                                  str(tmp_path / "r"), "--lm", str(bad), "--workers", "0", "--quiet"])
    assert r.exit_code == 1 and r.output.count("\n") == 1 and str(bad) in r.output, r.output
    r = CliRunner().invoke(main, ["predict", "--shards", str(tiny_shards), "--weights", str(trained),
                                  "--decoder", "fast-ctc-decode"])
    assert r.exit_code == 2 and "No such option '--decoder'" in r.output       # the previous decoder is gone
