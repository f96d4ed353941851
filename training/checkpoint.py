"""Checkpoints: written atomically, holding everything a run needs to continue at its exact step."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.atomic import atomic_path

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the data."""


def save(state: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (`phonerec train`) or point --weights at it")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc


def resolve(weights: str | Path, name: str = BEST) -> Path:
    """`weights` may be a folder (then `name` inside it) or a checkpoint file."""
    p = Path(weights)
    return p / name if p.is_dir() or not p.suffix else p
