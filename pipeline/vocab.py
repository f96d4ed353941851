"""The task's fixed symbol inventory: model output index = position in VOCAB (blank = 0)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

VOCAB: tuple[str, ...] = (
    "", "[SIL]", "NG", "F", "M", "AE", "R", "UW", "N", "IY", "AW", "V", "UH", "OW", "AA", "ER",
    "HH", "Z", "K", "CH", "W", "EY", "ZH", "T", "EH", "Y", "AH", "B", "P", "TH", "DH", "AO",
    "G", "L", "JH", "OY", "SH", "D", "AY", "S", "IH", "[SOS]", "[EOS]",
)
# One-character code per symbol, as used in submissions (same order as VOCAB).
CODES: tuple[str, ...] = (
    " ", "-", "G", "f", "m", "@", "r", "u", "n", "i", "W", "v", "U", "o", "a", "R",
    "h", "z", "k", "C", "w", "e", "Z", "t", "E", "y", "A", "b", "p", "T", "D", "c",
    "g", "l", "j", "O", "S", "d", "Y", "s", "I", "[SOS]", "[EOS]",
)
NUM_CLASSES = len(VOCAB)
BLANK = 0
SOS, EOS = "[SOS]", "[EOS]"
SYMBOL_INDEX: dict[str, int] = {s: i for i, s in enumerate(VOCAB)}
# Symbols a transcript may contain between its [SOS] and [EOS] markers.
LABEL_SYMBOLS = frozenset(VOCAB[1:-2])

assert NUM_CLASSES == 43 and len(CODES) == NUM_CLASSES


class TranscriptError(ValueError):
    """A transcript that cannot become a training target."""


def encode_transcript(symbols: Sequence[str]) -> np.ndarray:
    """Strip the [SOS]/[EOS] frame and map symbols to indices (uint8)."""
    syms = [str(s) for s in symbols]
    if len(syms) < 2 or syms[0] != SOS or syms[-1] != EOS:
        raise TranscriptError("transcript must start with [SOS] and end with [EOS]")
    body = syms[1:-1]
    if not body:
        raise TranscriptError("transcript is empty after stripping [SOS]/[EOS]")
    unknown = sorted({s for s in body if s not in LABEL_SYMBOLS})
    if unknown:
        shown = ", ".join(repr(s) for s in unknown[:5])
        raise TranscriptError(f"unknown symbol(s) {shown} (not in the 40-phoneme vocabulary)")
    return np.fromiter((SYMBOL_INDEX[s] for s in body), dtype=np.uint8, count=len(body))


def ctc_min_frames(labels: Sequence[int] | np.ndarray) -> int:
    """Fewest frames CTC needs: one per label plus a blank between each adjacent repeat."""
    lab = np.asarray(labels)
    if lab.size == 0:
        return 0
    return int(lab.size + np.count_nonzero(lab[1:] == lab[:-1]))


def ctc_min_frames_ragged(labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """`ctc_min_frames` of every utterance at once: utterance i's labels are
    labels[offsets[i]:offsets[i+1]]; int64 [len(offsets) - 1]."""
    lo = np.asarray(offsets, dtype=np.int64)
    labels = np.asarray(labels)
    if len(lo) < 2:
        return np.zeros(0, dtype=np.int64)
    same = labels[1:] == labels[:-1]
    inner = lo[1:-1]
    same[inner[(inner > 0) & (inner < len(labels))] - 1] = False      # pairs across utterances
    before = np.concatenate([[0], np.cumsum(same), [same.sum()]])     # [k]: repeat pairs before label k
    ends = np.maximum(lo[1:] - 1, lo[:-1])
    return (np.diff(lo) + before[ends] - before[lo[:-1]]).astype(np.int64)


def to_codes(indices: Iterable[int]) -> str:
    """Indices -> the one-character-code string of a submission."""
    return "".join(CODES[int(i)] for i in indices)


def to_arpabet(indices: Iterable[int]) -> list[str]:
    return [VOCAB[int(i)] for i in indices]
