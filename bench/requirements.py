"""The project's requirements without torch, one per line (pyproject.toml's, plus the extras named
on the command line): what `make gpu-check` installs beside a GPU machine's own CUDA torch.

    python -m bench.requirements test bench
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def requirements(extras: list[str]) -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return [r for r in reqs if re.split(r"[\s<>=!~\[;]", r, maxsplit=1)[0].lower() != "torch"]


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1:])))
