"""Generation: one utterance drawn, rendered, checked and retried until it passes, and the corpus
writer ``generate`` (sentence partitions per split, worker processes, metadata.tsv, speech-corpus.json).

Every random choice of an utterance comes from a generator seeded by (seed, split, index, attempt),
so the corpus does not depend on the number of worker processes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.atomic import atomic_path, write_json, write_text
from pipeline.errors import UsageProblem
from pipeline.features import MFCC_OPTIONS, SAMPLE_RATE, mfcc
from pipeline.vocab import EOS, SOS, SYMBOL_INDEX, ctc_min_frames

from .degrade import degrade
from .engines import (ENGINES, FLITE_PITCH_FIXED, Pool, check_tools, render, split_pools, split_voices, tool_versions,
                      voice_group, voice_kind)
from .phonemes import PAUSE, UnmappablePhone
from .sentences import FORTUNE_FILES, Clause, _word_key, parse_sentence, pronunciations, sentence_pool
from pipeline.workers import spawn_pool

# ------------------------------------------------------------------- variation ranges

RATE_RANGE = (0.8, 1.25)         # speaking rate factor, log-uniform
PITCH_RANGE = (-1.0, 1.0)
WARP_RANGE = (0.85, 1.15)        # resampling factor: >1 is faster and higher, like a smaller speaker
LEVEL_RANGE = (-32.0, -18.0)     # active-speech RMS, dBFS
SNR_RANGE = (10.0, 30.0)         # dB against active speech
PAD_RANGE = (0.15, 0.5)          # seconds of leading / trailing silence (under the noise)
SPEECH_SECONDS = (1.5, 8.0)      # rendered speech, after the warp


# ------------------------------------------------------------------------- utterances

MAX_ATTEMPTS = 30
MAX_MISMATCH = 0.12     # read-back vs dictionary phones: allowed edit distance per phone (allophony)


@dataclass
class Utterance:
    uid: str
    features: np.ndarray            # float32 [T, 15]
    labels: list[str]               # [SOS] [SIL] ... [SIL] [EOS]
    meta: dict
    audio: np.ndarray | None = None
    rejected: dict = field(default_factory=dict)


def split_code(split: str) -> int:
    return zlib.crc32(split.encode())


def _choose_prons(rng: np.random.Generator, clauses: list[Clause]) -> dict[str, list[str]]:
    lexicon = pronunciations()
    prons = {}
    for c in clauses:
        for w in c.words:
            k = _word_key(w)
            if k in prons:
                continue
            variants = lexicon[k]
            j = 0 if len(variants) == 1 or rng.random() < 0.7 else int(rng.integers(1, len(variants)))
            prons[k] = variants[j]
    return prons


def _dictionary_phones(clauses: list[Clause], prons: dict[str, list[str]]) -> list[str]:
    return [p.rstrip("012") for c in clauses for w in c.words for p in prons[_word_key(w)]]


def _draw_voice(rng: np.random.Generator, pools: tuple[Pool, ...]) -> str:
    """A pool by its share, then one of its voices uniformly."""
    shares = np.cumsum([p.share for p in pools])
    pool = pools[min(int(np.searchsorted(shares, rng.random() * shares[-1], side="right")), len(pools) - 1)]
    return pool.voices[int(rng.integers(len(pool.voices)))]


def synthesize_utterance(seed: int, split: str, index: int, uid: str, sentences: list[str],
                         engines: tuple[str, ...] = ENGINES, tmp: Path | None = None,
                         keep_audio: bool = False) -> Utterance:
    """Utterance `index` of `split`: drawn, rendered and checked; regenerated until it passes."""
    import Levenshtein

    pools = split_pools(split, engines)
    rejected: dict[str, int] = {}
    own_tmp = tmp is None
    tmpdir = Path(tempfile.mkdtemp(prefix="phonerec-speech-")) if own_tmp else Path(tmp)
    try:
        for attempt in range(MAX_ATTEMPTS):
            rng = np.random.default_rng([seed, split_code(split), index, attempt])
            text = sentences[int(rng.integers(len(sentences)))] if attempt else sentences[index % len(sentences)]
            voice = _draw_voice(rng, pools)
            rate = float(np.exp(rng.uniform(np.log(RATE_RANGE[0]), np.log(RATE_RANGE[1]))))
            pitch = float(rng.uniform(*PITCH_RANGE))
            if voice.startswith("flite:") and voice.partition(":")[2] in FLITE_PITCH_FIXED:
                pitch = 0.0
            warp = float(rng.uniform(*WARP_RANGE))
            level = float(rng.uniform(*LEVEL_RANGE))
            snr = float(rng.uniform(*SNR_RANGE))
            beta = float(rng.uniform(0.0, 1.5))
            pad = (float(rng.uniform(*PAD_RANGE)), float(rng.uniform(*PAD_RANGE)))
            clauses = parse_sentence(text)
            prons = _choose_prons(rng, clauses)
            try:
                r = render(voice, clauses, prons, rate, pitch, tmpdir)
            except UnmappablePhone as exc:
                rejected[f"unmappable phone {exc}"] = rejected.get(f"unmappable phone {exc}", 0) + 1
                continue
            speech_s = len(r.audio) / r.sr / warp
            if not SPEECH_SECONDS[0] <= speech_s <= SPEECH_SECONDS[1]:
                rejected["duration"] = rejected.get("duration", 0) + 1
                continue
            body = [s for s in r.labels if s != PAUSE]
            expected = _dictionary_phones(clauses, prons)
            if Levenshtein.distance(body, expected) > MAX_MISMATCH * len(expected):
                rejected["read-back differs from dictionary"] = rejected.get("read-back differs from dictionary", 0) + 1
                continue
            y = degrade(rng, r.audio, r.sr, warp, level, snr, beta, pad)
            feats = mfcc(y)
            idx = [SYMBOL_INDEX[s] for s in r.labels]
            if len(feats) < ctc_min_frames(idx) or not np.isfinite(feats).all():
                rejected["ctc-infeasible"] = rejected.get("ctc-infeasible", 0) + 1
                continue
            meta = {"id": uid, "voice": voice, "rate": round(rate, 3), "pitch": round(pitch, 3),
                    "warp": round(warp, 4), "snr_db": round(snr, 1), "level_dbfs": round(level, 1),
                    "noise_beta": round(beta, 2), "duration_s": round(len(y) / SAMPLE_RATE, 3),
                    "frames": int(len(feats)), "labels": len(r.labels), "text": text}
            return Utterance(uid, feats, [SOS, *r.labels, EOS], meta, y if keep_audio else None, rejected)
    finally:
        if own_tmp:
            shutil.rmtree(tmpdir, ignore_errors=True)
    raise RuntimeError(f"{split} utterance {index}: no acceptable rendering in {MAX_ATTEMPTS} attempts ({rejected})")


# ------------------------------------------------------------------------------ corpus

DEFAULT_SPLITS = {"train-clean-100": 3000, "dev-clean": 200, "test-clean": 200}
METADATA_COLUMNS = ("id", "voice", "rate", "pitch", "warp", "snr_db", "level_dbfs", "noise_beta",
                    "duration_s", "frames", "labels", "text")

_WORKER: dict = {}


def _init_worker(partitions: dict[str, list[str]], engines: tuple[str, ...], tmp_root: str) -> None:
    _WORKER.clear()
    _WORKER.update(partitions=partitions, engines=engines, tmp=Path(tempfile.mkdtemp(dir=tmp_root)))
    pronunciations()


def _job(job) -> tuple[dict, dict, list[str] | None]:
    out, seed, split, index, uid, labelled, keep_wav = job
    u = synthesize_utterance(seed, split, index, uid, _WORKER["partitions"][split], _WORKER["engines"],
                             tmp=_WORKER["tmp"], keep_audio=keep_wav)
    sdir = Path(out)
    with atomic_path(sdir / "mfcc" / f"{uid}.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, u.features)
    if labelled:
        with atomic_path(sdir / "transcript" / f"{uid}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.asarray(u.labels))
    if keep_wav:
        import soundfile as sf
        sf.write(str(sdir / "wav" / f"{uid}.wav"), u.audio, SAMPLE_RATE, subtype="FLOAT")
    return u.meta, u.rejected, (None if labelled else u.labels)


def partition_sentences(pool: list[str], splits: dict[str, int], seed: int) -> dict[str, list[str]]:
    """Disjoint sentence sets per split, sized in proportion to the split's utterance count."""
    order = np.random.default_rng([seed, 0x5E17]).permutation(len(pool))
    names = list(splits)
    total = sum(max(n, 1) for n in splits.values())
    if len(pool) < 3 * len(names):
        raise UsageProblem(f"sentence pool too small ({len(pool)}) for {len(names)} splits")
    cuts = [0]
    for name in names[:-1]:
        share = max(3, int(len(pool) * max(splits[name], 1) / total))
        cuts.append(min(cuts[-1] + share, len(pool) - 3 * (len(names) - len(cuts))))
    cuts.append(len(pool))
    return {name: [pool[i] for i in order[cuts[k]:cuts[k + 1]]] for k, name in enumerate(names)}


def _write_metadata(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".tsv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, METADATA_COLUMNS, delimiter="\t", lineterminator="\n", extrasaction="ignore")
        w.writeheader()
        for row in sorted(rows, key=lambda r: r["id"]):
            w.writerow(row)
    os.replace(tmp, path)


# The transcripts of an unlabelled (test) split, kept aside where the pipeline never looks (it reads
# only <split>/mfcc and <split>/transcript): a Kaggle-style solution file that the demo's summary
# scores the submission against. `index` is the submission row: the rank of the id among the
# split's sorted file names, the original order of every split.
ANSWERS = "answers.tsv"
ANSWERS_COLUMNS = ("index", "id", "voice", "kind", "phonemes")


def write_answers(path: Path, split: str, answers: dict[str, tuple[str, list[str]]]) -> None:
    """One row per utterance: index, id, voice, kind of voice, the ARPAbet labels without the frame."""
    lines = ["\t".join(ANSWERS_COLUMNS)]
    for i, uid in enumerate(sorted(answers, key=lambda u: f"{u}.npy")):     # as the file names sort
        voice, labels = answers[uid]
        body = [s for s in labels if s not in (SOS, EOS)]
        lines.append(f"{i}\t{uid}\t{voice}\t{voice_kind(split, voice) or ''}\t{' '.join(body)}")
    write_text(path, "\n".join(lines) + "\n")


def read_answers(path: str | os.PathLike) -> list[dict]:
    return read_metadata(path)


def read_metadata(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def generate(out: str | os.PathLike, splits: dict[str, int] | None = None, *, seed: int = 0,
             unlabelled: tuple[str, ...] = ("test-clean",), workers: int = 2, progress: bool = True,
             engines: tuple[str, ...] = ENGINES, keep_wav: bool = False,
             fortune_dir: str | os.PathLike | None = None) -> dict[str, dict]:
    """Write the corpus in the standard layout plus <split>/metadata.tsv and <out>/speech-corpus.json.

    Returns per split: utterances, frames, labelled, voice group, rejected renderings by reason.
    """
    engines = tuple(e for e in ENGINES if e in engines)
    if not engines:
        raise UsageProblem(f"no known engine in {engines!r}; choose from {', '.join(ENGINES)}")
    out = Path(out)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    done = _up_to_date(out, splits, seed=seed, unlabelled=unlabelled, engines=engines, keep_wav=keep_wav)
    if done is not None:
        return done
    check_tools(engines, fortune_dir)
    groups = {name: voice_group(name) for name in splits}
    for name in splits:
        split_pools(name, engines)            # fails now, not in a worker, if a split has no voice
    pool = sentence_pool(fortune_dir)
    partitions = partition_sentences(pool, splits, seed)
    jobs_by_split = {name: _split_jobs(out / name, seed, name, n, name not in unlabelled, keep_wav)
                     for name, n in splits.items()}
    summary = _run_jobs(out, jobs_by_split, partitions, engines, workers=workers, progress=progress,
                        unlabelled=unlabelled, groups=groups)
    info = _corpus_info(seed, engines, summary, partitions, pool, keep_wav)
    write_json(out / CORPUS_INFO, info)       # written last: its presence marks a finished corpus
    return summary


def _split_jobs(sdir: Path, seed: int, name: str, n: int, labelled: bool, keep_wav: bool) -> list[tuple]:
    """The synthesis jobs of one split, once its folders exist; refuses a folder of another corpus."""
    from ..random import utterance_ids

    ids = utterance_ids(np.random.default_rng([seed, split_code(name), 104729]), n)
    wanted = set(ids)
    stale = [p for p in sdir.glob("*/*.npy") if p.stem not in wanted] if sdir.is_dir() else []
    if stale:
        raise FileExistsError(f"{sdir} holds {len(stale)} feature/transcript files of another corpus "
                              f"(e.g. {stale[0]}); delete the folder or choose another --data")
    (sdir / "mfcc").mkdir(parents=True, exist_ok=True)
    if labelled:
        (sdir / "transcript").mkdir(parents=True, exist_ok=True)
    if keep_wav:
        (sdir / "wav").mkdir(parents=True, exist_ok=True)
    return [(str(sdir), seed, name, i, ids[i], labelled, keep_wav) for i in range(n)]


def _run_jobs(out: Path, jobs_by_split: dict[str, list[tuple]], partitions: dict[str, list[str]],
              engines: tuple[str, ...], *, workers: int, progress: bool, unlabelled: tuple[str, ...],
              groups: dict[str, str]) -> dict[str, dict]:
    """Synthesize every split (in `workers` spawned processes, or here when 1) and write its metadata.tsv."""
    summary: dict[str, dict] = {}
    pool_ctx = None
    tmp_root = tempfile.mkdtemp(prefix="phonerec-speech-")
    try:
        if workers > 1:
            pool_ctx = spawn_pool(workers, initializer=_init_worker,
                                                    initargs=(partitions, engines, tmp_root))
        else:
            _init_worker(partitions, engines, tmp_root)
        for name, jobs in jobs_by_split.items():
            rows, rejected = [], {}
            bar = tqdm(total=len(jobs), desc=f"synth-speech {name}", unit="utt", disable=not progress, leave=False)
            results = (pool_ctx.imap_unordered(_job, jobs, chunksize=2) if pool_ctx else map(_job, jobs))
            answers = {}
            for meta, rej, labels in results:
                rows.append(meta)
                if labels is not None:
                    answers[meta["id"]] = (meta["voice"], labels)
                for k, v in rej.items():
                    rejected[k] = rejected.get(k, 0) + v
                bar.update()
            bar.close()
            _write_metadata(out / name / "metadata.tsv", rows)
            if name in unlabelled:
                write_answers(out / name / ANSWERS, name, answers)
            summary[name] = {"utterances": len(rows), "frames": int(sum(r["frames"] for r in rows)),
                             "labelled": name not in unlabelled, "voice_group": groups[name],
                             "rejected": dict(sorted(rejected.items()))}
    finally:
        if pool_ctx is not None:
            pool_ctx.close()
            pool_ctx.join()
        _WORKER.clear()
        shutil.rmtree(tmp_root, ignore_errors=True)
    return summary


def _corpus_info(seed: int, engines: tuple[str, ...], summary: dict[str, dict], partitions: dict[str, list[str]],
                 pool: list[str], keep_wav: bool) -> dict:
    """What speech-corpus.json records: settings, voices and sentences per split, tools, ranges, summary."""
    info = {
        "generator": "phonerec synth-speech", "seed": seed, "engines": list(engines),
        "splits": {n: {"utterances": s["utterances"], "voice_group": s["voice_group"],
                       "labelled": s["labelled"], "sentences": len(partitions[n]),
                       "voices": split_voices(n, engines), "pools": _pools(n, engines)}
                   for n, s in summary.items()},
        "sentence_pool": {"sentences": len(pool), "files": list(FORTUNE_FILES),
                          "sha256": hashlib.sha256("\n".join(pool).encode()).hexdigest()},
        "tools": tool_versions(), "mfcc": {k: v for k, v in MFCC_OPTIONS.items()},
        "ranges": _ranges(),
    }
    info["summary"] = summary
    info["keep_wav"] = keep_wav
    return info


CORPUS_INFO = "speech-corpus.json"


def _pools(split: str, engines: tuple[str, ...]) -> list[list]:
    """The split's pools as speech-corpus.json records them: [name, share, voices]."""
    return [[p.name, p.share, list(p.voices)] for p in split_pools(split, engines)]


def _ranges() -> dict:
    return {"rate": RATE_RANGE, "pitch": PITCH_RANGE, "warp": WARP_RANGE, "level_dbfs": LEVEL_RANGE,
            "snr_db": SNR_RANGE, "pad_s": PAD_RANGE, "speech_s": SPEECH_SECONDS}


def _up_to_date(out: Path, splits: dict[str, int], *, seed: int, unlabelled: tuple[str, ...],
                engines: tuple[str, ...], keep_wav: bool) -> dict[str, dict] | None:
    """The summary of a finished corpus under `out` made with these settings, else None (so a
    rerun, e.g. of `make demo`, costs nothing)."""
    try:
        info = json.loads((out / CORPUS_INFO).read_text())
    except (OSError, ValueError):
        return None
    summary = info.get("summary")
    if info.get("seed") != seed or info.get("engines") != list(engines) or not isinstance(summary, dict) \
            or info.get("keep_wav", False) != keep_wav or set(summary) != set(splits):
        return None
    if info.get("ranges") != json.loads(json.dumps(_ranges())):
        return None                               # made by a version with other variation ranges
    for name, n in splits.items():
        s = summary[name]
        labelled = name not in unlabelled
        if s.get("utterances") != n or s.get("labelled") != labelled:
            return None
        recorded = info.get("splits", {}).get(name, {})
        if recorded.get("voices") != split_voices(name, engines) or recorded.get("pools") != _pools(name, engines):
            return None                           # another voice split
        if not labelled and not (out / name / ANSWERS).is_file():
            return None
        folders = ["mfcc"] + (["transcript"] if labelled else [])
        if any(len(list((out / name / f).glob("*.npy"))) != n for f in folders):
            return None
    return summary
