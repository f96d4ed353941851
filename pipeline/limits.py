"""Caps on process counts, shared by both stages: a typo must not start a thousand processes."""

from __future__ import annotations

import os

# Loader workers per rank (stage 2) and reader/writer processes (stage 1): 4 x this machine's cores.
MAX_WORKERS = 4 * max(os.cpu_count() or 1, 1)
