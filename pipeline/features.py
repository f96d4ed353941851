"""The feature contract every stage reads: frame rate, width, storage dtype, and the MFCC
front-end that makes features from audio (the speech corpus and `phonerec transcribe` share it).
"""

from __future__ import annotations

import os

import numpy as np

FEATURE_DIM = 15                 # MFCCs per frame (the F22 edition of the task)
FRAME_RATE = 100                 # frames per second (10 ms hop)
FRAMES_PER_HOUR = FRAME_RATE * 3600
STORAGE_DTYPE = np.dtype(np.float16)          # normalized features inside the shards
STORAGE_MAX = float(np.finfo(STORAGE_DTYPE).max)
BYTES_PER_FRAME = FEATURE_DIM * STORAGE_DTYPE.itemsize     # one stored frame in a shard


def hours(frames) -> float:
    return frames / FRAMES_PER_HOUR


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


def mfcc_from_wav(path: str | os.PathLike) -> np.ndarray:
    """The corpus's feature extraction applied to an audio file (any rate; stereo is averaged)."""
    import soundfile as sf

    y, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return mfcc(y.mean(axis=1), sr)
