"""What turns a clean rendering into a recording: a speaker-like resampling warp, a level, silence
padding and colored background noise at a signal-to-noise ratio.

Separate from generation so the audio treatment can be read (and tested) on its own; the ranges
it is drawn from live with the draw, in generate.
"""

from __future__ import annotations

import numpy as np

from pipeline.features import HOP_LENGTH, SAMPLE_RATE, WIN_LENGTH

def _active_power(y: np.ndarray) -> float:
    """Mean power of the 25 ms frames within 40 dB of the loudest (speech, not pauses)."""
    n = len(y) // HOP_LENGTH
    if n == 0:
        return float(np.mean(y ** 2) + 1e-12)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, (0, WIN_LENGTH)), WIN_LENGTH)[::HOP_LENGTH][:n]
    p = np.mean(frames.astype(np.float64) ** 2, axis=1)
    return float(np.mean(p[p >= p.max() * 1e-4]) + 1e-12)


def colored_noise(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """Unit-power Gaussian noise with a 1/f**beta power spectrum (0 white, 1 pink, 2 brown)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    spec *= np.maximum(f, 20.0) ** (-beta / 2.0)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def degrade(rng: np.random.Generator, y: np.ndarray, sr: int, warp: float, level_db: float, snr_db: float,
            noise_beta: float, pad: tuple[float, float]) -> np.ndarray:
    """Warp-resample to 16 kHz, pad with silence, set the level, add noise at the SNR; float32."""
    import librosa

    y = librosa.resample(np.asarray(y, np.float32), orig_sr=sr * warp, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    power = _active_power(y)
    y = y * (10 ** (level_db / 20) / np.sqrt(power))
    y = np.concatenate([np.zeros(int(pad[0] * SAMPLE_RATE)), y, np.zeros(int(pad[1] * SAMPLE_RATE))])
    noise = colored_noise(rng, len(y), noise_beta) * np.sqrt(10 ** (level_db / 10) / 10 ** (snr_db / 10))
    return np.clip(y + noise, -1.0, 1.0).astype(np.float32)
