"""The benchmark suite. Run its scripts as modules from the repository root, e.g.
``python -m bench.run_all --quick``; they import the library (``pipeline``, ``training``,
``corpora``) like any other user of it.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]     # the repository root: cwd of the subprocesses started
