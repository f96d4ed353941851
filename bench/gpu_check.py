"""The GPU path checked and measured in one command (`make gpu-check`), at most about 8 minutes on one
GPU: the GPU tests (tests/test_gpu.py), the beam search on CUDA against the same search on the CPU
(all cores) and greedy, training speed of the GPU presets with --amp, and the GPU demo recipe,
shortened. Writes OUT/gpu_check.json and OUT/gpu_check.md (a markdown table per part).

Usage (from the repository root, with a CUDA build of torch):
  python -m bench.gpu_check [--out results] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import ROOT
from bench.bench_decode import FAMILIES, _timed, cpu_model, torch_threads
from decoding import CTCBeamDecoder, default_labels, greedy_decode
from decoding.lm import dense, estimate

CLASSES = 43
PRESETS = ("large", "f22-best", "s24-pblstm")


def gpu_tests() -> dict:
    """tests/test_gpu.py in a child process: its counts and its last lines."""
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                          "tests/test_gpu.py"], cwd=ROOT, capture_output=True, text=True, check=False)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error)", out.stdout)}
    return {"returncode": out.returncode, **counts, "seconds": round(time.monotonic() - t0, 1),
            "tail": out.stdout.strip().splitlines()[-15:]}


def _lm(labels):
    lp = FAMILIES["peaked"](32, 400, CLASSES, seed=7)
    strings = [[labels[c] for c in h] for h in greedy_decode(lp, torch.full((32,), 400))]
    return dense(estimate(strings, 4, labels[1:]), labels)


def _rate(fn, batch: int, cuda: bool) -> float:
    """Utterances/s of fn, best of 2 after a warm-up run."""
    def run():
        fn()
        if cuda:
            torch.cuda.synchronize()
    run()
    (sec, _), _ = _timed(run, 2)
    return round(batch / sec, 1)


def decoder_rows(frames: int, batches=(64, 256), widths=(10, 50)) -> list[dict]:
    """The search on CUDA, the same search on the CPU on every core, and greedy on CUDA."""
    labels, cores = default_labels(CLASSES), os.cpu_count() or 1
    lm, rows = _lm(labels), []
    for family, make in FAMILIES.items():
        for batch in batches:
            lp = make(batch, frames, CLASSES, seed=1234)
            lens = torch.full((batch,), frames)
            gl, gq = lp.cuda(), lens.cuda()
            greedy = _rate(lambda: greedy_decode(gl, gq), batch, True)
            for w in widths:
                for with_lm in (False, True):
                    dec = CTCBeamDecoder(labels=labels, beam_width=w, cutoff_top_n=CLASSES, log_probs_input=True,
                                         num_processes=cores, lm=lm if with_lm else None,
                                         alpha=0.5 if with_lm else 0.0, beta=1.0 if with_lm else 0.0)
                    cuda = _rate(lambda: dec.best(gl, gq), batch, True)
                    with torch_threads(cores):
                        cpu = _rate(lambda: dec.best(lp, lens), batch, False)
                    rows.append({"family": family, "batch": batch, "beam_width": w, "lm": with_lm,
                                 "cuda_utt_per_s": cuda, "cpu_utt_per_s": cpu, "cpu_threads": cores,
                                 "greedy_cuda_utt_per_s": greedy, "cuda_over_cpu": round(cuda / cpu, 2)})
                    print(f"  {family:<10} batch {batch:<4} W={w:<3} LM={with_lm!s:<5} cuda {cuda:8.1f}  "
                          f"cpu {cpu:8.1f} utt/s", flush=True)
    return rows


def _phonerec(*args) -> None:
    subprocess.run([sys.executable, "-m", "phonerec", *map(str, args)], cwd=ROOT, check=True)


def _last_epoch(results: Path) -> dict:
    lines = [json.loads(x) for x in (results / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if "epoch" in r and "frames_per_s" in r][-1]


def corpus(work: Path, train: int) -> Path:
    """A synthetic corpus of `train` training utterances, and its shards."""
    from corpora.random import generate
    data, shards = work / "data", work / "shards"
    generate(data, {"train-clean-100": train, "dev-clean": 200, "test-clean": 100}, seed=0, workers=4, progress=False)
    _phonerec("shards", "--data", data, "--shards", shards, "--quiet")
    return shards


def training_rows(shards: Path, work: Path, steps: int) -> list[dict]:
    """frames/s and the data-wait fraction of each GPU preset with --amp (one epoch, `steps` steps)."""
    rows = []
    for preset in PRESETS:
        w = work / f"w-{preset}"
        t0 = time.monotonic()
        _phonerec("train", "--shards", shards, "--weights", w, "--results", w / "r", "--preset", preset, "--amp",
                  "--device", "cuda", "--epochs", "1", "--max-steps", steps, "--no-tune-decoding", "--quiet")
        rec = _last_epoch(w / "r")
        rows.append({"preset": preset, "amp": True, "steps": steps, "frames_per_s": round(rec["frames_per_s"]),
                     "data_wait_fraction": round(rec["data_wait_fraction"], 3),
                     "seconds": round(time.monotonic() - t0, 1)})
        print(f"  {preset:<11} --amp  {rec['frames_per_s']:10.0f} frames/s  data wait "
              f"{rec['data_wait_fraction']:.1%}", flush=True)
    return rows


def demo_row(shards: Path, work: Path, epochs: int) -> dict:
    """configs/demo-gpu.yaml for `epochs` epochs on the synthetic corpus, then predict."""
    w, t0 = work / "w-demo", time.monotonic()
    _phonerec("train", "--config", ROOT / "configs" / "demo-gpu.yaml", "--shards", shards, "--weights", w,
              "--results", w / "r", "--epochs", epochs, "--device", "cuda", "--quiet")
    _phonerec("predict", "--shards", shards, "--weights", w, "--results", w / "r", "--device", "cuda", "--quiet")
    rec = _last_epoch(w / "r")
    return {"recipe": "configs/demo-gpu.yaml", "epochs": epochs, "dev_per": rec.get("dev_per"),
            "frames_per_s": round(rec["frames_per_s"]), "minutes": round((time.monotonic() - t0) / 60, 2),
            "submission_rows": len((w / "r" / "submission.csv").read_text().splitlines()) - 1}


def markdown(res: dict) -> str:
    t = res["tests"]
    lines = [f"GPU check on {res['device']} (host CPU {res['cpu']}), {res['date']}, torch {res['torch']}", "",
             f"- tests/test_gpu.py: {t.get('passed', 0)} passed, {t.get('failed', 0)} failed, "
             f"{t.get('skipped', 0)} skipped (exit {t['returncode']})", "",
             "| posteriors | batch | beam | LM | CUDA utt/s | CPU utt/s (threads) | CUDA / CPU | greedy on CUDA utt/s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['batch']} | {r['beam_width']} | {'yes' if r['lm'] else 'no'} | "
              f"{r['cuda_utt_per_s']} | {r['cpu_utt_per_s']} ({r['cpu_threads']}) | {r['cuda_over_cpu']} | "
              f"{r['greedy_cuda_utt_per_s']} |" for r in res["decoding"]]
    lines += ["", "| preset | amp | frames/s | data wait |", "|---|---|---|---|"]
    lines += [f"| {r['preset']} | yes | {r['frames_per_s']} | {r['data_wait_fraction']:.1%} |" for r in res["training"]]
    d = res.get("demo") or {}
    if d:
        lines += ["", f"- {d['recipe']}, {d['epochs']} epochs on the synthetic corpus: dev PER "
                      f"{100 * (d['dev_per'] or 0):.1f} %, {d['frames_per_s']} frames/s, {d['minutes']} min, "
                      f"{d['submission_rows']} submission rows"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer steps (a smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("Error: the GPU check needs a CUDA device and a CUDA build of torch; this machine has none",
              file=sys.stderr)
        return 2
    res = {"device": torch.cuda.get_device_name(), "cpu": cpu_model(), "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M"), "tests": gpu_tests()}
    res["decoding"] = decoder_rows(300 if args.quick else 1000, (64,) if args.quick else (64, 256))
    with tempfile.TemporaryDirectory() as tmp:
        shards = corpus(Path(tmp), 300 if args.quick else 3000)
        res["training"] = training_rows(shards, Path(tmp), 5 if args.quick else 40)
        res["demo"] = demo_row(shards, Path(tmp), 1 if args.quick else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(res))
    print(markdown(res))
    return 1 if res["tests"]["returncode"] else 0


if __name__ == "__main__":
    sys.exit(main())
