"""The feature contract every stage reads: frame rate, width, storage dtype, and the MFCC
front-end that makes features from audio (the speech corpus and `phonerec transcribe` share it).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable

import numpy as np

from .errors import PhonerecError

FEATURE_DIM = 15                 # MFCCs per frame in the F22 edition: manifests and checkpoints without a width
WIDTH_MAJORITY = 3               # the corpus's width: at least 3 training files for each of any other width
FRAME_RATE = 100                 # frames per second (10 ms hop)
FRAMES_PER_HOUR = FRAME_RATE * 3600
STORAGE_DTYPE = np.dtype(np.float16)          # normalized features inside the shards
STORAGE_MAX = float(np.finfo(STORAGE_DTYPE).max)


def hours(frames) -> float:
    return frames / FRAMES_PER_HOUR


def bytes_per_frame(dim: int) -> int:
    """One stored frame of a corpus `dim` features wide, in a shard."""
    return dim * STORAGE_DTYPE.itemsize


class WidthError(PhonerecError):
    """The training files agree on no feature width."""


def corpus_width(widths: Iterable[int | None], where: str, given: int | None = None) -> int:
    """The corpus's features per frame: `given`, or the width the training files' headers share
    by a clear majority (WIDTH_MAJORITY times as many files as the next width), never whichever file
    comes first. Files of another width are rejected later, naming both widths. None stands for a
    header that gives no width."""
    if given:
        return int(given)
    counts = Counter(w for w in widths if w)
    if not counts:
        return FEATURE_DIM          # nothing readable: every file is rejected later, with its reason
    (width, n), *rest = counts.most_common(2)
    if rest and n < WIDTH_MAJORITY * rest[0][1]:
        found = ", ".join(f"{w} in {c} file(s)" for w, c in sorted(counts.items()))
        raise WidthError(f"no clear feature width in {where}: [T, D] headers with D = {found}; pass the "
                         "corpus's width with --feature-dim (files of other widths are then rejected)")
    return width


# ----------------------------------------------------------------------------- MFCC front-end

SAMPLE_RATE = 16000
HOP_LENGTH = SAMPLE_RATE // FRAME_RATE      # 160 samples = 10 ms
WIN_LENGTH = 400                            # 25 ms
N_FFT = 400
N_MELS = 40
MFCC_OPTIONS = dict(sr=SAMPLE_RATE, n_mfcc=FEATURE_DIM, n_fft=N_FFT, hop_length=HOP_LENGTH,
                    win_length=WIN_LENGTH, n_mels=N_MELS, fmin=0.0, fmax=SAMPLE_RATE / 2)


def mfcc(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """15 MFCCs per 10 ms frame of 16 kHz audio (25 ms Hann window, 40 mel bands): float32 [T, 15].

    Audio at another rate is resampled to 16 kHz first. T = 1 + len(y) // 160 (centred frames).
    Needs the `speech` extra (librosa).
    """
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio [samples], got shape {y.shape}")
    if sr != SAMPLE_RATE:
        y = librosa.resample(y, orig_sr=sr, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    feats = librosa.feature.mfcc(y=y, **MFCC_OPTIONS)
    return np.ascontiguousarray(feats.T, dtype=np.float32)


class AudioTooShort(ValueError):
    """A recording with no analysis window of samples (a header and no samples)."""


def mfcc_from_wav(path: str | os.PathLike) -> np.ndarray:
    """The corpus's feature extraction applied to an audio file (any rate; stereo is averaged)."""
    import soundfile as sf

    y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if y.shape[0] * SAMPLE_RATE < WIN_LENGTH * sr:      # a header and no samples (or under one window)
        window_ms = WIN_LENGTH * 1000 // SAMPLE_RATE
        raise AudioTooShort(f"{y.shape[0]} samples at {sr} Hz, shorter than one {window_ms} ms analysis window: "
                            "nothing to recognize")
    return mfcc(y.mean(axis=1), sr)
