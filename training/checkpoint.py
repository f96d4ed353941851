"""Checkpoints: written atomically, holding everything a run needs to continue at its exact step.

A checkpoint is serialized in memory first and then written with one atomic write (temp file,
fsync, rename): a crash, a kill or a full disk during the write leaves the previous checkpoint
under its name intact, and a full disk is reported as a WriteError (one line on the command line)
rather than torch's opaque "PytorchStreamWriter failed writing file" error.

Checkpoints hold only plain data (dicts, lists, numbers, strings, tensors) and are read with
`torch.load(weights_only=True)`: a planted file whose pickle would import and call something
(os.system, say) is refused before anything in it runs. Checkpoints written before the RNG state
was stored as plain numbers hold numpy's RNG key array; for those (and only those) numpy's array
reconstruction is admitted too, with the numeric dtypes only (no object arrays).
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import torch

from pipeline.atomic import atomic_path
from pipeline.errors import PhonerecError

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(PhonerecError):
    """A checkpoint that is missing, unreadable or does not fit the data."""


def save(state: dict, path: str | Path) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(buf.getbuffer())


def remove_stale_temps(weights: str | Path) -> list[Path]:
    """Temp files of checkpoint writes that a killed run left behind (`.last.pt.tmp<pid>`)."""
    removed = []
    folder = Path(weights)
    if folder.is_dir():
        for name in (LAST, BEST, "config.json"):
            for p in folder.glob(f".{name}.tmp*"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _numpy_array_globals() -> list:
    """What numpy arrays of plain numbers need to unpickle (old checkpoints' RNG state): the array
    reconstruction under its numpy 1 and 2 names, ndarray, dtype and the numeric dtype classes."""
    import numpy as np
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtype_classes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefd"}
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *sorted(dtype_classes, key=str)]


# What torch's weights-only unpickler says when a pickle imports something it does not admit.
_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)")
_DETAIL = re.compile(r"WeightsUnpickler error: ([^\n]+)")


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (`phonerec train`) or point --weights at it")
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(f"checkpoint {path} refuses to load: it holds code (it imports {found.group(1)}); "
                                  "only plain checkpoints written by phonerec load") from None
        detail = _DETAIL.search(str(exc))
        msg = " ".join((detail.group(1) if detail else str(exc)).split())[:300]
        raise CheckpointError(f"cannot read checkpoint {path} (UnpicklingError: {msg}); it is damaged or not a "
                              "phonerec checkpoint: use another checkpoint (e.g. best.pt) or retrain") from None
    except Exception as exc:  # noqa: BLE001
        msg = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {msg}); it is damaged: "
                              f"use another checkpoint (e.g. best.pt) or retrain") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a phonerec "
                              "checkpoint; use another checkpoint (e.g. best.pt) or retrain")
    return state


def resolve(weights: str | Path, name: str = BEST) -> Path:
    """`weights` may be a folder (then `name` inside it) or a checkpoint file."""
    p = Path(weights)
    return p / name if p.is_dir() or not p.suffix else p
