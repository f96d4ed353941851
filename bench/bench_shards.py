"""Preprocessing benchmark: wall time, throughput and peak memory of `phonerec shards` at several corpus sizes.

Usage (from the repository root):
  python -m bench.bench_shards --sizes 7135,28539 [--work /tmp/phonerec-bench] [--out results/bench_shards.json]

Corpora are generated with ``corpora.random.generate`` (``corpus-<N>`` under ``--work``, reused when
present); what is timed is ``phonerec shards`` building them, run as ``python -m phonerec``.
Peak memory is the largest resident set of any process of the run (main or worker), from
getrusage of the waited-for process tree, so it shows whether memory grows with corpus size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench import ROOT
from bench.harness import run_child
from pipeline.features import FEATURE_DIM, hours

TRAIN = "train-clean-100"


def suffix(n: int, dim: int = FEATURE_DIM) -> str:
    """'<n>' for F22's width, '<n>-d<dim>' for another: the names of a corpus's folders."""
    return f"{n}" if dim == FEATURE_DIM else f"{n}-d{dim}"


def ensure_corpus(work: Path, n: int, workers: int = 2, log=None, dim: int = FEATURE_DIM) -> Path:
    """work/corpus-<n>[-d<dim>]: n training utterances `dim` features wide, dev and test a tenth
    each (at least 10), generated only when its training split is missing."""
    from corpora.random import generate

    data = work / f"corpus-{suffix(n, dim)}"
    if not (data / TRAIN).is_dir():
        if log is not None:
            log(f"generating corpus-{suffix(n, dim)}")
        dev = test = max(n // 10, 10)
        generate(data, {TRAIN: n, "dev-clean": dev, "test-clean": test}, workers=workers, progress=False,
                 feature_dim=dim)
    return data


def phonerec(*args: str) -> list[str]:
    return [sys.executable, "-m", "phonerec", *args]


def measure(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB of the largest process in the tree) of one command run in a fresh child."""
    child = run_child(cmd)
    if child.returncode:
        raise RuntimeError(f"{' '.join(cmd[2:5])} failed (exit {child.returncode}):\n{child.stderr[-2000:]}")
    return child.wall_s, child.maxrss_mb


def run(sizes: list[int], work: Path, workers: int, keep: bool = False, dim: int = FEATURE_DIM) -> dict:
    rows = []
    for n in sizes:
        data, shards = ensure_corpus(work, n, workers, dim=dim), work / f"shards-{suffix(n, dim)}"
        shutil.rmtree(shards, ignore_errors=True)
        seconds, peak = measure(phonerec("shards", "--data", str(data), "--shards", str(shards), "--quiet",
                                         "--workers", str(workers)))
        rerun_s, _ = measure(phonerec("shards", "--data", str(data), "--shards", str(shards), "--quiet",
                                      "--workers", str(workers)))
        total = {}
        for split in (TRAIN, "dev-clean", "test-clean"):
            m = json.loads((shards / split / "manifest.json").read_text())
            total[split] = (m["num_utterances"], m["total_frames"], len(m["shards"]))
        utts = sum(v[0] for v in total.values())
        frames = sum(v[1] for v in total.values())
        raw_mb = sum(f.stat().st_size for f in data.rglob("*.npy")) / 2**20
        shard_mb = sum(f.stat().st_size for f in shards.rglob("*.tar")) / 2**20
        rows.append({"train_utterances": n, "utterances": utts, "frames": frames, "hours": hours(frames),
                     "seconds": round(seconds, 1), "utts_per_s": round(utts / seconds, 1),
                     "frames_per_s": round(frames / seconds), "peak_rss_mb": round(peak),
                     "rerun_seconds": round(rerun_s, 1), "raw_mb": round(raw_mb), "shard_mb": round(shard_mb),
                     "train_shards": total[TRAIN][2], "workers": workers, "feature_dim": dim})
        print(json.dumps(rows[-1]), flush=True)
        if not keep:
            shutil.rmtree(shards, ignore_errors=True)
    return {"machine": f"{os.cpu_count()} CPU cores", "runs": rows}


def table(res: dict) -> str:
    lines = ["| train utterances | all utterances | hours | wall time (s) | utts/s | peak RSS (MB) | rerun (s) | raw MB -> shard MB |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["runs"]:
        lines.append(f"| {r['train_utterances']:,} | {r['utterances']:,} | {r['hours']:.1f} | {r['seconds']} | "
                     f"{r['utts_per_s']} | {r['peak_rss_mb']} | {r['rerun_seconds']} | {r['raw_mb']} -> {r['shard_mb']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_shards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="7135,28539", help="Comma-separated training-split sizes.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phonerec-bench"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_shards.json")
    ap.add_argument("--keep", action="store_true", help="Keep the shards of the largest size.")
    a = ap.parse_args()
    res = run([int(s) for s in a.sizes.split(",")], a.work, a.workers, a.keep)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(table(res))


if __name__ == "__main__":
    main()
