"""Checkpoints: written atomically, holding everything a run needs to continue at its exact step.

A checkpoint is serialized in memory first and then written with one atomic write (temp file,
fsync, rename): a crash, a kill or a full disk during the write leaves the previous checkpoint
under its name intact, and a full disk is reported as a WriteError (one line on the command line)
rather than torch's opaque "PytorchStreamWriter failed writing file" error.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from pipeline.atomic import atomic_path

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(RuntimeError):
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


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (`phonerec train`) or point --weights at it")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        msg = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {msg}); it is damaged: "
                              f"use another checkpoint (e.g. best.pt) or retrain") from None


def resolve(weights: str | Path, name: str = BEST) -> Path:
    """`weights` may be a folder (then `name` inside it) or a checkpoint file."""
    p = Path(weights)
    return p / name if p.is_dir() or not p.suffix else p
