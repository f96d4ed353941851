"""Reading and checking one utterance; every failure becomes a reason string, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .vocab import FEATURE_DIM, TranscriptError, ctc_min_frames, encode_transcript


class UtteranceError(ValueError):
    """Why an utterance cannot be used (the message is the reason shown to the user)."""

    path: Path | None = None  # the offending file, when it is not the features file


class Rejection(NamedTuple):
    split: str
    uid: str
    path: str
    reason: str


def npy_frames(path: Path) -> int:
    """Frame count from the .npy header alone (128 bytes), used to sort before ingest."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            shape, _, _ = np.lib.format._read_array_header(fh, version)  # noqa: SLF001
    except Exception:  # noqa: BLE001 - any unreadable header is ingested (and rejected) later
        return 0
    return int(shape[0]) if len(shape) >= 1 else 0


def _load(path: Path, what: str) -> np.ndarray:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UtteranceError(f"cannot access {what} file: {exc.strerror or exc}") from exc
    if size == 0:
        raise UtteranceError(f"empty {what} file (0 bytes)")
    try:
        return np.load(path, allow_pickle=False)
    except PermissionError as exc:
        raise UtteranceError(f"{what} file is not readable (permission denied)") from exc
    except ValueError as exc:
        msg = str(exc)
        if "allow_pickle" in msg:
            raise UtteranceError(f"{what} file holds a Python-object array") from exc
        if "reshape" in msg or "EOF" in msg or "size" in msg:
            raise UtteranceError(f"truncated {what} file ({size} bytes): {msg}") from exc
        raise UtteranceError(f"{what} file is not a valid .npy file: {msg}") from exc
    except (OSError, EOFError) as exc:
        raise UtteranceError(f"{what} file is not a valid .npy file ({size} bytes): {exc}") from exc


def load_features(path: Path) -> np.ndarray:
    """A float32 [T, 15] array with T >= 1 and only finite values."""
    x = _load(path, "feature")
    if x.dtype.kind != "f":
        raise UtteranceError(f"features have dtype {x.dtype}, expected a float type")
    if x.ndim != 2 or x.shape[1] != FEATURE_DIM:
        hint = " (looks transposed: [15, T])" if x.ndim == 2 and x.shape[0] == FEATURE_DIM else ""
        raise UtteranceError(f"features have shape {list(x.shape)}, expected [T, {FEATURE_DIM}]{hint}")
    if x.shape[0] < 1:
        raise UtteranceError("features have 0 frames")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        raise UtteranceError(f"features contain NaN or infinity ({bad} frame(s))")
    return np.ascontiguousarray(x, dtype=np.float32)


def load_transcript(path: Path) -> np.ndarray:
    """Vocabulary indices (uint8) without the [SOS]/[EOS] frame."""
    try:
        t = _load(path, "transcript")
    except UtteranceError as exc:
        if "Python-object" not in str(exc):
            raise
        # Some releases store transcripts as object arrays of str: accept exactly that.
        t = np.load(path, allow_pickle=True)
        if not all(isinstance(s, str) for s in t.reshape(-1)):
            raise UtteranceError("transcript holds objects that are not strings") from exc
    if t.ndim != 1 or t.dtype.kind not in "UO":
        raise UtteranceError(f"transcript has shape {list(t.shape)} and dtype {t.dtype}, "
                             "expected a 1-D array of symbol strings")
    try:
        return encode_transcript(t.tolist())
    except TranscriptError as exc:
        raise UtteranceError(f"transcript: {exc}") from exc


def load_utterance(mfcc: Path, transcript: Path | None, labelled: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and check one utterance; raises UtteranceError with the reason."""
    if labelled and transcript is None:
        raise UtteranceError("features without a transcript")
    feats = load_features(mfcc)
    if not labelled:
        return feats, None
    try:
        labels = load_transcript(transcript)
    except UtteranceError as exc:
        exc.path = transcript
        raise
    need = ctc_min_frames(labels)
    if feats.shape[0] < need:
        raise UtteranceError(f"CTC-infeasible: {feats.shape[0]} frames but {len(labels)} labels "
                             f"need at least {need} frames")
    return feats, labels
