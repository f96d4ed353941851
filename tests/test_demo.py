"""`make demo` end to end on a tiny synthesized-speech corpus, so the target cannot rot.

The real demo (5,000 utterances, 7 epochs) is measured by hand and reported in the README;
here every stage runs for real on 16/4/4 utterances and one epoch, through the Makefile.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("librosa", reason="the speech extra is not installed: pip install -e '.[speech]'")
from corpora import speech as sp  # noqa: E402

try:
    sp.check_tools()
    _MISSING = None
except sp.MissingToolError as exc:
    _MISSING = str(exc)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.skipif(_MISSING is not None, reason=f"speech tools missing: {_MISSING}")
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "phonerec").exists(), reason="needs `make setup` first")
def test_make_demo_tiny(tmp_path):
    dirs = {"DEMO_DATA": tmp_path / "data", "DEMO_SHARDS": tmp_path / "shards", "WEIGHTS": tmp_path / "weights",
            "RESULTS": tmp_path / "results"}
    args = ["make", "-s", "demo", "DEMO_TRAIN=16", "DEMO_DEV=4", "DEMO_TEST=4", "DEMO_EPOCHS=1",
            *(f"{k}={v}" for k, v in dirs.items())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]

    res = dirs["RESULTS"]
    with open(res / "submission.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(4))
    ev = json.loads((res / "evaluate-dev-clean.json").read_text())
    assert ev["utterances"] == 4 and ev["phonemes"] > 0
    assert (res / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the summary the demo prints, and its JSON twin
    assert "phonerec run summary" in out and "padding efficiency" in out and "greedy distance" in out
    summary = json.loads((res / "summary.json").read_text())
    assert summary["corpus"]["train-clean-100"]["utterances"] == 16
    assert summary["train"]["epochs"] == 1 and summary["submission"]["rows"] == 4
    assert summary["evaluate"]["beam_per"] >= 0
    voices = summary["voices"]                          # PER per dev voice, from the corpus metadata
    assert sum(v["utterances"] for v in voices.values()) == 4
    assert set(voices) <= {"festival:ked_diphone", "espeak-ng (all variants)"}

    # a second run reuses the corpus (nothing synthesized again) and the unchanged shards
    info = dirs["DEMO_DATA"] / "speech-corpus.json"
    stamp = info.stat().st_mtime_ns
    proc = subprocess.run(args + ["ARGS=--max-steps 1"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert info.stat().st_mtime_ns == stamp
