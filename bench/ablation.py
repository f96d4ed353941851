"""The model ablation on the synthesized-speech corpus: each new component alone, each new preset.

Usage (after `make demo`, whose corpus and shards it reuses):
  python -m bench.ablation [--data data/demo] [--shards shards/demo] [--epochs 2] [--max-steps N]
                           [--max-frames 5000] [--out results/ablation] [--rows NAME,NAME]

Every row trains on the same shards with the same seed, epochs, batch budget and training settings
(configs/demo.yaml's: lr 2e-3, light SpecAugment, per-utterance normalization), then evaluates the
dev split. The first five rows are the demo model (the `default` preset narrowed to 192) with one
component changed; the last two are the new presets at CPU width. Reported per row: parameters,
time downsampling, training frames/s and minutes, dev PER (beam) per kind of voice and on kinds
1 + 2 together. Writes OUT/ablation.json and OUT/ablation.md; a row already in ablation.json with
the same budget is not run again (delete it to rerun).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import ROOT
from pipeline.atomic import write_json, write_text

TRAINING = ["--lr", "0.002", "--warmup", "0.03", "--time-masks", "2", "--time-width", "15",
            "--freq-masks", "1", "--freq-width", "3", "--seed", "0"]
DEMO_MODEL = ["--preset", "default", "--set", "input_norm=utterance", "--set", "conv_channels=[192,192]",
              "--set", "lstm_layers=2", "--set", "lstm_hidden=192", "--set", "classifier_hidden=[384]",
              "--set", "conv_dropout=0.05", "--set", "lstm_dropout=0.1", "--set", "classifier_dropout=0.1"]
ROWS: dict[str, list[str]] = {
    "demo model (default narrowed to 192)": DEMO_MODEL,
    "+ locked dropout 0.2 (instead of per-step 0.1)": [*DEMO_MODEL, "--set", "locked_dropout=0.2",
                                                       "--set", "lstm_dropout=0"],
    "+ pBLSTM (its x2 replaces the conv stride)": [*DEMO_MODEL, "--set", "conv_strides=[1,1]",
                                                   "--set", "pblstm_layers=1"],
    "+ 2 ConvNeXt blocks": [*DEMO_MODEL, "--set", "embed_block=convnext", "--set", "embed_blocks=2"],
    "+ 2 ResNet blocks": [*DEMO_MODEL, "--set", "embed_block=resnet", "--set", "embed_blocks=2"],
    "f22-best-cpu": ["--preset", "f22-best-cpu", "--set", "input_norm=utterance"],
    "s24-pblstm-cpu": ["--preset", "s24-pblstm-cpu", "--set", "input_norm=utterance"],
}


def _phonerec(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "phonerec", *args], check=True, cwd=ROOT)


def run_row(name: str, model_args: list[str], a: argparse.Namespace, work: Path) -> dict:
    """Train, evaluate and score one row; its figures."""
    from corpora.report import per_kind
    from training import metrics
    from training.model import ModelConfig
    weights, results = work / "weights", work / "results"
    started = time.perf_counter()
    _phonerec("train", "--shards", a.shards, "--weights", str(weights), "--results", str(results),
              "--epochs", str(a.epochs), "--max-steps", str(a.max_steps), "--max-frames", str(a.max_frames), "--quiet", *TRAINING,
              *model_args)
    minutes = (time.perf_counter() - started) / 60
    _phonerec("evaluate", "--shards", a.shards, "--weights", str(weights), "--results", str(results), "--quiet")
    config = json.loads((weights / "config.json").read_text())
    rows = metrics.read(results)
    dev = (per_kind(Path(a.data), results) or {}).get("dev-clean", {})
    return {"name": name, "args": model_args, "parameters": config.get("parameters"),
            "downsampling": ModelConfig.from_dict(config["model"]).downsampling, "minutes": round(minutes, 1),
            "frames_per_s": round(sum(r.get("frames_per_s", 0) for r in rows) / max(len(rows), 1)),
            "kinds": {k: v["beam_per"] for k, v in dev.get("kinds", {}).items()},
            "target_beam_per": (dev.get("target") or {}).get("beam_per"),
            "evaluate": json.loads((results / "evaluate-dev-clean.json").read_text())}


def _budget(b: dict) -> str:
    steps = f" of {b['max_steps']} steps" if b.get("max_steps") else ""
    return f"{b.get('epochs')} epoch(s){steps} in {b.get('max_frames')}-frame batches"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def table(results: list[dict]) -> str:
    kinds = list(dict.fromkeys(k for r in results for k in r["kinds"]))
    head = ["row", "parameters", "down", "frames/s", "min", *kinds, "kinds 1 + 2", "dev (all)"]
    budgets = sorted({_budget(r.get("budget") or {}) for r in results})
    lines = [f"Dev PER (beam) after {' / '.join(budgets)}: the same corpus, seed and settings for every row.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        per = [_pct(r["kinds"].get(k)) for k in kinds]
        lines.append(f"| {r['name']} | {r['parameters'] / 1e6:.2f} M | x{r['downsampling']} | {r['frames_per_s']:,} | "
                     f"{r['minutes']} | " + " | ".join(per) +
                     f" | {_pct(r['target_beam_per'])} | {_pct(r['evaluate']['beam_per'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/demo")
    p.add_argument("--shards", default="shards/demo")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0, help="Steps per epoch (0: whole epochs).")
    p.add_argument("--max-frames", type=int, default=5000, help="Frame budget per batch (the demo's 5,000; "
                   "smaller gives more updates in the same time: one epoch at 2,500 leaves CTC's plateau).")
    p.add_argument("--out", default="results/ablation")
    p.add_argument("--rows", default="", help="Comma-separated row names (default: all).")
    a = p.parse_args(argv)
    out = Path(a.out)
    done = json.loads((out / "ablation.json").read_text()) if (out / "ablation.json").is_file() else []
    names = [n for n in ROWS if not a.rows or n in a.rows.split(",")]
    for i, name in enumerate(names):
        budget = {"epochs": a.epochs, "max_steps": a.max_steps, "max_frames": a.max_frames}
        if any(r["name"] == name and r.get("budget") == budget for r in done):
            continue
        print(f"[{i + 1}/{len(names)}] {name}", flush=True)
        row = {**run_row(name, ROWS[name], a, out / f"row{list(ROWS).index(name)}"), "budget": budget}
        done = [r for r in done if r["name"] != name] + [row]
        done.sort(key=lambda r: list(ROWS).index(r["name"]) if r["name"] in ROWS else len(ROWS))
        write_json(out / "ablation.json", done)
        write_text(out / "ablation.md", table(done))
    print(table(done))


if __name__ == "__main__":
    main()
