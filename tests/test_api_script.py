"""The Python API called from a plain script, without an `if __name__ == "__main__":` guard: its
worker processes (spawned) must not run the script again (they did: a build started in every
worker and fought over the shards folder's lock)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from corpora.random import generate
from tests.helpers import ROOT

SCRIPT = """
print("script body ran", flush=True)
from pipeline.config import ShardsConfig
from pipeline.build import build_shards
summary = build_shards(ShardsConfig(data={data!r}, shards={shards!r}, workers=2, progress=False), log=lambda m: None)
print("built", flush=True)
"""


def test_an_unguarded_script_runs_once_with_worker_processes(tmp_path):
    data = tmp_path / "data"
    generate(data, {"train-clean-100": 40, "dev-clean": 6, "test-clean": 5}, seed=3, workers=1, progress=False)
    script = tmp_path / "my_script.py"
    script.write_text(textwrap.dedent(SCRIPT.format(data=str(data), shards=str(tmp_path / "shards"))))
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["script body ran", "built"], proc.stdout + proc.stderr[-2000:]
    assert (tmp_path / "shards" / "train-clean-100" / "manifest.json").is_file()


@pytest.mark.slow
def test_the_readmes_python_api_runs_as_written(tmp_path):
    """The README's Python API block, verbatim, as a plain script (no `__main__` guard) in a folder
    holding a small corpus in `data/` and a feature file `utt.npy`: every call runs once and ends."""
    import numpy as np
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    generate(tmp_path / "data", {"train-clean-100": 40, "dev-clean": 6, "test-clean": 5}, seed=3, workers=1,
             progress=False)
    np.save(tmp_path / "utt.npy", np.load(next((tmp_path / "data" / "test-clean" / "mfcc").glob("*.npy"))))
    script = tmp_path / "api.py"
    script.write_text('print("script body ran", flush=True)\n' + block)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("script body ran") == 1
    assert (tmp_path / "results" / "submission.csv").is_file() and (tmp_path / "weights" / "decode.json").is_file()
    assert "utt.npy\t" in proc.stdout
    if "Traceback" in proc.stderr:
        pytest.fail(proc.stderr[-2000:])
