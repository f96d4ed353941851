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


def _read_header(fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of an open .npy file, leaving it at the start of the data."""
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    if version == (1, 0):
        return fmt.read_array_header_1_0(fh)
    if version == (2, 0):
        return fmt.read_array_header_2_0(fh)
    # Version 3.0 (UTF-8 field names) has no public reader; its private name moved in NumPy 2.
    impl = getattr(fmt, "_read_array_header", None) or np.lib._format_impl._read_array_header  # noqa: SLF001
    return impl(fh, version)


def npy_frames(path: Path) -> int:
    """Frame count from the .npy header alone (128 bytes), used to sort before ingest."""
    try:
        with open(path, "rb") as fh:
            shape, _, _ = _read_header(fh)
    except Exception:  # noqa: BLE001 - any unreadable header is ingested (and rejected) later
        return 0
    return int(shape[0]) if len(shape) >= 1 else 0


def _load(path: Path, what: str, allow_objects: bool = False) -> np.ndarray:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UtteranceError(f"cannot access {what} file: {exc.strerror or exc}") from exc
    if size == 0:
        raise UtteranceError(f"empty {what} file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(np.lib.format.MAGIC_PREFIX))
            if head != np.lib.format.MAGIC_PREFIX[:len(head)]:
                raise UtteranceError(f"{what} file is not a .npy file (no NumPy header, {size} bytes)")
            fh.seek(0)
            try:
                shape, _, dtype = _read_header(fh)
            except Exception as exc:  # noqa: BLE001 - a damaged header can raise several types
                msg = str(exc)
                if "EOF" in msg:
                    raise UtteranceError(f"truncated {what} file ({size} bytes): {msg}") from exc
                raise UtteranceError(f"{what} file is not a valid .npy file: {msg}") from exc
            data_start = fh.tell()
    except PermissionError as exc:
        raise UtteranceError(f"{what} file is not readable (permission denied)") from exc
    except OSError as exc:
        raise UtteranceError(f"{what} file is not a valid .npy file ({size} bytes): {exc}") from exc
    if dtype.hasobject:
        if not allow_objects:
            raise UtteranceError(f"{what} file holds a Python-object array")
        try:
            arr = np.load(path, allow_pickle=True)
        except Exception as exc:  # noqa: BLE001 - a damaged pickle can raise almost anything
            raise UtteranceError(f"{what} file holds an unreadable Python-object array "
                                 f"(truncated?): {type(exc).__name__}: {exc}") from exc
        if not isinstance(arr, np.ndarray):
            raise UtteranceError(f"{what} file does not hold an array")
        return arr
    expected = data_start + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise UtteranceError(f"truncated {what} file ({size} bytes, its header needs {expected})")
    try:
        return np.load(path, allow_pickle=False)
    except PermissionError as exc:
        raise UtteranceError(f"{what} file is not readable (permission denied)") from exc
    except (ValueError, OSError, EOFError) as exc:
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
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():          # e.g. float64 values beyond float32's range
        raise UtteranceError("features hold values beyond the float32 range (overflow to infinity)")
    return x


def load_transcript(path: Path) -> np.ndarray:
    """Vocabulary indices (uint8) without the [SOS]/[EOS] frame."""
    # Some releases store transcripts as object arrays of str: accept exactly that.
    t = _load(path, "transcript", allow_objects=True)
    if t.dtype.hasobject and not all(isinstance(s, str) for s in t.reshape(-1)):
        raise UtteranceError("transcript holds objects that are not strings")
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
