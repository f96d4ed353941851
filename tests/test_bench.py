"""The benchmark suite end to end in its quick mode (`python -m bench.run_all --quick`, from the
repository root as `make bench` runs it): every figure is produced (not how fast anything is)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import ROOT
from bench.bench_loader import SYSTEMS

FIGURES = ("padding_efficiency", "loader_frames_per_s", "loader_utts_per_s", "loader_frames_per_s_w0",
           "loader_utts_per_s_w0", "peak_rss_mb", "max_batch_frames", "batch_frames_std", "first_batch_s",
           "train_frames_per_s", "data_wait_fraction")
POSITIVE = ("padding_efficiency", "loader_frames_per_s", "loader_utts_per_s", "loader_frames_per_s_w0",
            "loader_utts_per_s_w0", "peak_rss_mb", "max_batch_frames", "first_batch_s", "train_frames_per_s")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.slow
def test_run_all_quick(tmp_path):
    out = tmp_path / "results"
    # about a CPU-minute, but several on a busy machine: the timeout only catches a hang
    proc = subprocess.run([sys.executable, "-m", "bench.run_all", "--quick", "--work",
                           str(tmp_path / "work"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((out / "bench.json").read_text())

    for system in SYSTEMS:
        res = rep[system]
        for key in FIGURES:
            assert _finite(res.get(key)), (system, key, res.get(key))
        for key in POSITIVE:
            assert res[key] > 0, (system, key, res[key])
        assert 0 < res["padding_efficiency"] <= 1
        assert 0 <= res["data_wait_fraction"] <= 1
        assert res["batch_frames_std"] >= 0
    assert rep["ours"]["max_batch_frames"] <= rep["config"]["max_frames"]      # frame budget by construction

    assert rep["corpus"]["utterances"] > 0 and rep["corpus"]["frames"] > 0
    m = rep["machine"]
    assert m["cpus"] > 0 and m["cpu_model"] and m["ram_gb"] > 0
    assert "-m bench.run_all" in rep["command"] and "--quick" in rep["command"]
    assert rep["preprocessing"]["runs"] and all(r["seconds"] > 0 for r in rep["preprocessing"]["runs"])
    assert rep["decoding"]["rows"] and rep["decoding"]["config"]["quick"]
    assert set(rep["goals"]) >= {"padding_efficiency_ge_0.97", "loader_ge_5x_lazy", "loader_not_bottleneck",
                                 "max_batch_within_budget", "peak_memory_bounded"}
    assert rep["memory_scaling"] and all(_finite(r["ours"]) for r in rep["memory_scaling"])

    md = (out / "bench.md").read_text()
    assert "| figure | ours | baseline lazy | baseline in-memory | ours ÷ lazy |" in md
    assert "padding efficiency" in md and "Preprocessing" in md and "Decoding" in md and rep["command"] in md
    for png in ("bench_lengths.png", "bench_bars.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.slow                    # two short training runs through the CLI
def test_ablation_rows(fast, tmp_path, monkeypatch):
    """bench/ablation.py trains and evaluates each chosen row on the same shards and reports its
    parameters, downsampling, frames/s and dev PER per kind of voice; a finished row is not rerun."""
    from bench import ablation
    from corpora.speech import KIND_UNSEEN_SPEAKER, KIND_VARIANTS
    from pipeline import manifest as mf
    from training.model import build_model, count_parameters

    _, shards = fast
    dev = mf.load(shards, "dev-clean")
    data = tmp_path / "data"
    (data / "dev-clean").mkdir(parents=True)
    voices = ["espeak-ng:en-us+f3", "festival:ked_diphone"]
    (data / "dev-clean" / "metadata.tsv").write_text(
        "id\tvoice\ttext\n" + "".join(f"{u}\t{voices[i % 2]}\tText.\n" for i, u in enumerate(dev.ids)))
    names = list(ablation.ROWS)[:2]
    args = ["--data", str(data), "--shards", str(shards), "--epochs", "1", "--max-steps", "2",
            "--out", str(tmp_path / "out"), "--rows", ",".join(names)]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ablation.main(args)
    rows = json.loads((tmp_path / "out" / "ablation.json").read_text())
    assert [r["name"] for r in rows] == names
    demo = build_model("default", input_norm="utterance", conv_channels=[192, 192], lstm_layers=2, lstm_hidden=192,
                       classifier_hidden=[384])
    assert rows[0]["parameters"] == count_parameters(demo) and rows[0]["downsampling"] == 2
    assert rows[1]["parameters"] == rows[0]["parameters"]       # locked dropout adds no parameter
    for r in rows:
        assert set(r["kinds"]) == {KIND_VARIANTS, KIND_UNSEEN_SPEAKER} and r["frames_per_s"] > 0
        assert 0 <= r["target_beam_per"] == r["kinds"][KIND_VARIANTS]
        assert r["budget"] == {"epochs": 1, "max_steps": 2, "max_frames": 5000}
    md = (tmp_path / "out" / "ablation.md").read_text()
    assert "after 1 epoch(s) of 2 steps in 5000-frame batches" in md and md.count("\n| ") == 3

    def boom(*a, **k):
        raise AssertionError("a finished row must not run again")
    monkeypatch.setattr(ablation, "run_row", boom)
    ablation.main(args)
