"""Stage-2 click commands (train, predict, evaluate, transcribe); attached by pipeline.cli."""

from __future__ import annotations

COMMANDS: list = []
