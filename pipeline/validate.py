"""Checking one utterance of a corpus (stage 1): its transcript read and encoded, paired with its
features (pipeline/npyfile.py reads both files), CTC-feasible; every failure becomes a reason
string (a Rejection), never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .features import FEATURE_DIM
from .npyfile import UtteranceError, load_array, load_features
from .vocab import F22, Inventory, TranscriptError, ctc_min_frames


class Rejection(NamedTuple):
    split: str
    uid: str
    path: str
    reason: str


def _symbol_text(s) -> str:
    if isinstance(s, bytes):
        try:
            return s.decode("ascii")
        except UnicodeDecodeError:
            raise UtteranceError(f"transcript holds a byte string that is not ASCII: {s[:20]!r}") from None
    return s


def load_transcript(path: Path, inventory: Inventory = F22) -> np.ndarray:
    """The inventory's output indices (uint8), its framing ([SOS]/[EOS]) stripped.

    Accepts 1-D arrays of str (`<U`), of ASCII bytes (`|S`), and object arrays of either (as some
    releases store them; read without running the pickle: `pipeline.npyfile`)."""
    t = load_array(path, "transcript", allow_objects=True)
    kinds = set(map(type, t.reshape(-1).tolist())) if t.dtype.hasobject else {bytes if t.dtype.kind == "S" else str}
    if not all(issubclass(k, (str, bytes)) for k in kinds):
        raise UtteranceError("transcript holds objects that are not strings")
    if t.ndim != 1 or t.dtype.kind not in "UOS":
        raise UtteranceError(f"transcript has shape {list(t.shape)} and dtype {t.dtype}, "
                             "expected a 1-D array of symbol strings")
    symbols = t.tolist()
    if any(issubclass(k, bytes) for k in kinds):
        symbols = [_symbol_text(s) for s in symbols]
    try:
        return inventory.encode(symbols)
    except TranscriptError as exc:
        raise UtteranceError(f"transcript: {exc}") from exc


def load_utterance(mfcc: Path, transcript: Path | None, labelled: bool, dim: int = FEATURE_DIM,
                   inventory: Inventory = F22) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and check one utterance of a corpus `dim` features wide, its transcript encoded with
    `inventory`; raises UtteranceError."""
    if labelled and transcript is None:
        raise UtteranceError("features without a transcript")
    feats = load_features(mfcc, dim)
    if not labelled:
        return feats, None
    try:
        labels = load_transcript(transcript, inventory)
    except UtteranceError as exc:
        exc.path = transcript
        raise
    need = ctc_min_frames(labels)
    if feats.shape[0] < need:
        raise UtteranceError(f"CTC-infeasible: {feats.shape[0]} frames but {len(labels)} labels "
                             f"need at least {need} frames")
    return feats, labels
