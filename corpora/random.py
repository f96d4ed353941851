"""Stage 0: a LibriSpeech-shaped random corpus in the standard layout, for tests and benchmarks.

Lengths follow LibriSpeech's shape (1-35 s at 100 frames/s, most 10-16 s). Each phoneme is a
run of frames around a phoneme-specific mean with noise, so a model can actually learn it;
features are offset and scaled like raw MFCCs so that normalization matters. Every utterance
comes from its own seeded generator, so output does not depend on the worker count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.features import FEATURE_DIM, FRAME_RATE
from pipeline.vocab import EOS, SOS, VOCAB
from pipeline.workers import spawn_pool

PHONEMES = VOCAB[1:-2]                  # [SIL] + 39 phonemes
FRAMES_PER_S = FRAME_RATE
DEFAULT_SPLITS = {"train-clean-100": 1000, "dev-clean": 100, "test-clean": 100}


def sample_durations(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds: mostly 10-16 s, a tail down to 1 s and up to 35 s."""
    core = rng.normal(14.0, 1.7, n)
    tail = rng.gamma(2.2, 3.2, n) + 1.0
    dur = np.where(rng.random(n) < 0.72, core, tail)
    return np.clip(dur, 1.0, 35.0)


def _phone_means(seed: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7919])
    return rng.normal(0, 1.0, (len(PHONEMES), dim))


def _offset_scale(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw-MFCC-like per-dimension offsets and scales."""
    return np.linspace(-30.0, 8.0, dim), np.linspace(12.0, 2.0, dim)


def utterance(seed: int, split_no: int, i: int, frames: int, dim: int = FEATURE_DIM) -> tuple[np.ndarray, list[str]]:
    """One utterance: float32 [frames, dim] and its framed ARPAbet transcript."""
    rng = np.random.default_rng([seed, split_no, i])
    means = _phone_means(seed, dim)
    frames = max(int(frames), 3)
    seg = []
    total = 0
    while total < frames:                       # ~6-14 frames per phoneme, [SIL] at both ends
        d = int(rng.integers(6, 15))
        seg.append(d)
        total += d
    seg[-1] -= total - frames
    if seg[-1] <= 0:
        seg.pop()
        seg[-1] += frames - sum(seg)
    n = len(seg)
    ph = rng.integers(1, len(PHONEMES), n)      # non-silence phonemes
    ph[0] = ph[-1] = 0
    for k in range(1, n):                       # no adjacent repeats: each run is one symbol
        if ph[k] == ph[k - 1]:
            ph[k] = 1 + (ph[k] % (len(PHONEMES) - 1))
    if n >= 2 and ph[-2] == 0:
        ph[-2] = 1
    seq = np.repeat(ph, seg)
    x = means[seq] + rng.normal(0, 0.6, (frames, dim))
    offset, scale = _offset_scale(dim)
    x = x * scale + offset
    labels = [SOS] + [PHONEMES[p] for p in ph] + [EOS]
    return x.astype(np.float32), labels


def _write(job) -> int:
    out, seed, split_no, i, uid, frames, labelled, nested, dim = job
    x, labels = utterance(seed, split_no, i, frames, dim)
    np.save(Path(out) / "mfcc" / f"{uid}.npy", x)
    if labelled:
        tdir = Path(out) / "transcript" / ("raw" if nested else "")
        np.save(tdir / f"{uid}.npy", np.asarray(labels))
    return frames


def utterance_ids(rng: np.random.Generator, n: int) -> list[str]:
    """LibriSpeech-style ids speaker-chapter-utterance, unique."""
    ids = []
    spk = int(rng.integers(19, 9000))
    chapter = int(rng.integers(1000, 300000))
    k = 0
    for _ in range(n):
        if k >= int(rng.integers(20, 120)):
            spk += int(rng.integers(1, 40))
            chapter = int(rng.integers(1000, 300000))
            k = 0
        ids.append(f"{spk}-{chapter}-{k:04d}")
        k += 1
    return ids


def generate(out: str | Path, splits: dict[str, int] | None = None, *, seed: int = 0,
             unlabelled: tuple[str, ...] = ("test-clean",), nested_transcripts: bool = False,
             workers: int = 2, progress: bool = True, feature_dim: int = FEATURE_DIM) -> dict[str, dict]:
    """Write the corpus (`feature_dim` features per frame); returns per split the number of
    utterances and frames."""
    out = Path(out)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    summary = {}
    for split_no, (name, n) in enumerate(splits.items()):
        rng = np.random.default_rng([seed, split_no, 104729])
        frames = np.round(sample_durations(rng, n) * FRAMES_PER_S).astype(int)
        ids = utterance_ids(rng, n)
        labelled = name not in unlabelled
        sdir = out / name
        (sdir / "mfcc").mkdir(parents=True, exist_ok=True)
        if labelled:
            (sdir / "transcript" / ("raw" if nested_transcripts else "")).mkdir(parents=True, exist_ok=True)
        jobs = [(str(sdir), seed, split_no, i, ids[i], int(frames[i]), labelled, nested_transcripts, feature_dim)
                for i in range(n)]
        bar = tqdm(total=n, desc=f"synth {name}", unit="utt", disable=not progress, leave=False)
        if workers <= 1:
            for j in jobs:
                _write(j)
                bar.update()
        else:
            with spawn_pool(workers) as pool:
                for _ in pool.imap_unordered(_write, jobs, chunksize=16):
                    bar.update()
        bar.close()
        summary[name] = {"utterances": n, "frames": int(frames.sum()), "labelled": labelled}
    return summary
