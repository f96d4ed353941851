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
    readme, last = (ROOT / "README.md").read_bytes(), (ROOT / "docs" / "bench-last.json").read_bytes()
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
    step = rep["training_step"]
    arms = [r["arm"] for r in step["rows"]]
    assert all(r["cpu_s"] > 0 and len(r["frames_per_s"]) == 2 for r in step["rows"])
    if arms == ["before", "today"]:          # the clone holds bench_train.BEFORE_REV (not a shallow one)
        assert step["ratio_epochs_per_cpu_hour"] > 0 and step["rows"][0]["code"] == step["config"]["before"]
    else:
        assert arms == ["today"] and step["ratio_epochs_per_cpu_hour"] is None
    assert set(rep["goals"]) >= {"padding_efficiency_ge_0.97", "loader_ge_5x_lazy", "loader_not_bottleneck",
                                 "max_batch_within_budget", "peak_memory_bounded"}
    assert rep["memory_scaling"] and all(_finite(r["ours"]) for r in rep["memory_scaling"])

    md = (out / "bench.md").read_text()
    assert "## The training step" in md and ("Epochs per CPU-hour, today over before" in md or
                                             "No 'before' arm" in md)
    assert "| figure | ours | baseline lazy | baseline in-memory | ours ÷ lazy |" in md
    assert "padding efficiency" in md and "Preprocessing" in md and "Decoding" in md and rep["command"] in md
    for png in ("bench_lengths.png", "bench_bars.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    # the ratio rows the README's table is generated from (bench/report.py); quick figures never reach it
    summary = json.loads((out / "bench-summary.json").read_text())
    assert summary == rep["summary"] and summary["cpu"] and summary["commit"] and summary["date"] == rep["date"]
    names = [r["name"] for r in summary["rows"]]
    assert len(names) == len(set(names)) and {"padding", "loader", "loader_w0", "training", "memory_growth" if
                                              len(rep["memory_scaling"]) > 1 else "loader_memory", "http",
                                              "width_loader", "decode_peaked_w10_t1"} <= set(names)
    assert all(_finite(r["ratio"]) and r["ratio"] > 0 for r in summary["rows"])
    assert ("train_step" in names) == (step["ratio_epochs_per_cpu_hour"] is not None)
    assert (ROOT / "README.md").read_bytes() == readme
    assert (ROOT / "docs" / "bench-last.json").read_bytes() == last


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


def test_remote_loader_reads_the_same_batches(tiny_shards, tmp_path):
    """bench/bench_remote.py: ours' loader over HTTP on 127.0.0.1 (no cache; cache cold, then warm)
    delivers exactly the local-disk batches, which are the planned ones, and every figure is there."""
    import time

    from bench import bench_remote
    from pipeline import manifest as mf
    from training.plan import BatchOptions, plan_epoch

    t0 = time.perf_counter()
    # the whole epoch in every pass (the cap is above it): identical batches can be demanded
    res = bench_remote.run(tiny_shards, quick=True, rounds=2, batches=10_000, seconds=120.0, cache_root=tmp_path,
                           log=lambda *_: None)
    assert time.perf_counter() - t0 < 60            # about 8 s; the limit only catches a hang
    cfg, passes = res["config"], res["passes"]
    m = mf.load(tiny_shards, cfg["split"])
    plan = plan_epoch(m, seed=cfg["seed"], epoch=0, workers=cfg["workers"],
                      opts=BatchOptions(max_frames=cfg["max_frames"], max_utts=cfg["max_utts"]))
    local = passes["local"]
    assert local["batches"] == local["planned_batches"] == len(plan.sequence()) > 1
    assert local["rows_digest"] == bench_remote.rows_digest(plan.sequence())     # the plan's batches, in order
    assert local["frames"] == sum(int(m.frames[b].sum()) for b in plan.sequence())
    for name in bench_remote.PASSES:
        p = passes[name]
        assert _finite(res[f"loader_frames_per_s_{name}"]) and res[f"loader_frames_per_s_{name}"] > 0, name
        assert _finite(res[f"loader_utts_per_s_{name}"]) and res[f"loader_utts_per_s_{name}"] > 0, name
        if name != "local":
            assert _finite(res[f"{name}_over_local"]) and res[f"{name}_over_local"] > 0, name
        assert (p["batches"], p["compared_batches"], p["same_batches"]) == (local["batches"],) * 2 + (True,), name
        assert p["rounds"] == 2 and p["frames_per_s"] == max(p["frames_per_s_rounds"]), name
        assert (p["digest"], p["rows_digest"], p["frames"]) == (local["digest"], local["rows_digest"],
                                                                 local["frames"]), name
    assert res["same_batches"] is True
    http, cold, warm = (passes[n]["counters"] for n in ("http", "http_cache_cold", "http_cache_warm"))
    assert http["fetched"] >= len(m.shards) and http["cache_hits"] == 0 and http["retries"] == 0
    assert cold["fetched"] >= len(m.shards) and cold["cache_hits"] == 0
    assert warm["fetched"] == 0 and warm["cache_hits"] >= len(m.shards)      # the warm pass read the cache only
    # the HTTP passes went through the benchmark's server: their shards (each round) plus the manifest
    assert res["requests"] == {"GET 200": 2 * (http["fetched"] + cold["fetched"]) + 1}
    assert res["url"].startswith("http://127.0.0.1:")
    assert not list(tmp_path.iterdir())                 # the cache folder is removed at the end
    md = bench_remote.markdown(res)
    assert md.count("\n| ") == len(bench_remote.PASSES) and "HTTP + cache, warm" in md


def test_remote_batch_crc_covers_the_data():
    """The crc32 that proves the HTTP batches identical changes with any feature, label or row."""
    import torch

    from bench.bench_remote import batch_crc
    from training.data import Batch

    def batch():
        g = torch.Generator().manual_seed(0)
        return Batch(torch.randn(3, 7, 15, generator=g).half(), torch.tensor([7, 5, 2]),
                     torch.randint(1, 40, (3, 4), generator=g), torch.tensor([4, 3, 1]), torch.tensor([10, 11, 12]))

    ref = batch_crc(batch())
    assert batch_crc(batch()) == ref
    for change in (lambda b: b.feats[2, 1, 14].add_(1), lambda b: b.labels[0, 3].add_(1),
                   lambda b: b.rows[1].add_(1), lambda b: b.lengths[2].add_(1)):
        b = batch()
        change(b)
        assert batch_crc(b) != ref


def test_profile_step_accounts_for_the_step(tmp_path):
    """bench/profile_step.py (issue 28's profile): every part of a training step is timed, the parts
    add up to the step, and the profiler's operators include the LSTM's."""
    from bench import profile_step
    from tests.helpers import ROOT
    res = profile_step.profile(str(ROOT / "configs" / "demo.yaml"), batch=2, frames=120, steps=2, threads=1)
    parts = res["parts"]
    assert set(parts) == {"augmentation", "stem + embedding", "BiLSTM", "classifier", "rest of forward", "CTC loss",
                          "backward", "clip + AdamW"}
    assert all(parts[k]["s_per_step"] > 0 for k in parts if k != "rest of forward")
    assert sum(p["share"] for p in parts.values()) == pytest.approx(1.0, abs=0.05)
    assert any("rnn" in o["op"] or "lstm" in o["op"] for o in res["top_ops"])
    assert "| BiLSTM |" in profile_step.markdown(res)
    import training.model as tm
    assert tm.run_lstm.__name__ == "run_lstm"          # the timing wrapper is gone again
