"""`phonerec summary`: one short report of a finished run (what `make demo` prints): corpus,
batching, training, scores, and with a synth-speech corpus the PER per kind of voice.

It only reads what the stages wrote (manifests, metrics.jsonl, config.json, evaluate-<split>.json,
submission.csv) and the corpus's own records, so it can be rerun at any time and never disagrees
with them. It sits above the stages (it reads every stage's output and the corpus's knowledge of
who spoke what), so no stage imports it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import click

from corpora.report import per_kind
from pipeline import manifest as mf
from pipeline.features import hours
from pipeline.cli_options import make_config
from pipeline.cli_options import FieldCommand, click_options
from pipeline.options import Options, option
from training import metrics


@dataclass
class SummaryConfig(Options):
    """`phonerec summary`: where the stages wrote."""

    shards: str = option("shards", help="The shards folder (reads the manifests).")
    weights: str = option("weights", help="Checkpoint folder (reads config.json).")
    results: str = option("results", help="Folder with metrics.jsonl, evaluate-<split>.json, submission.csv.")
    split: str = option("dev-clean", help="The evaluated split to report.")
    data: str = option("", help="Raw corpus root: with a synth-speech corpus (metadata.tsv, the test split's "
                                "kept-aside answers.tsv), also the PER per kind of voice on dev and test.")
    json: bool = option(False, help="Print the figures as JSON instead.")


def _hours(frames: int) -> float:
    return hours(frames)


def _fmt_seconds(s: float) -> str:
    m, s = divmod(int(round(s)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


def collect(shards: str | Path, weights: str | Path, results: str | Path, split: str = "dev-clean",
            data: str | Path | None = None) -> dict:
    """Everything the report shows, as plain data (missing pieces are None)."""
    shards, weights, results = Path(shards), Path(weights), Path(results)
    corpus = {}
    for name in mf.available_splits(shards):
        m = mf.load(shards, name)
        corpus[name] = {"utterances": m.num_utterances, "rejected": m.rejected, "labelled": m.labelled,
                        "hours": round(_hours(m.total_frames), 2), "shards": len(m.shards)}
    rows = metrics.read(results)
    train = None
    if rows:
        last = rows[-1]
        train = {"epochs": len(rows), "steps": last.get("step"),
                 "seconds": round(sum(r.get("epoch_seconds", 0.0) for r in rows), 1),
                 "padding_efficiency": last.get("padding_efficiency"),
                 "frames_per_s": round(sum(r.get("frames_per_s", 0.0) for r in rows) / len(rows)),
                 "world": last.get("world", 1),
                 "best_dev_distance": _best_distance(rows)}
    config = None
    cfg_path = weights / "config.json"
    if cfg_path.is_file():
        raw = json.loads(cfg_path.read_text())
        config = {"preset": raw.get("train", {}).get("preset"), "parameters": raw.get("parameters"),
                  "overrides": raw.get("train", {}).get("model") or {}}
    ev = None
    ev_path = results / f"evaluate-{split}.json"
    if ev_path.is_file():
        ev = json.loads(ev_path.read_text())
    sub = results / "submission.csv"
    submission = None
    if sub.is_file():
        with open(sub, newline="") as fh:
            submission = {"path": str(sub), "rows": sum(1 for _ in csv.DictReader(fh))}
    plots = [str(p) for p in (results / metrics.CURVES,) if p.is_file()]
    voices = per_kind(Path(data), results) if data else None
    return {"corpus": corpus, "train": train, "model": config, "evaluate": ev, "split": split,
            "voices": voices, "submission": submission, "plots": plots}


def _best_distance(rows: list[dict]) -> float | None:
    """The best dev distance of the run, of the trained or the averaged weights (what best.pt holds)."""
    found = [r[k] for r in rows for k in ("dev_distance", "dev_distance_averaged") if r.get(k) is not None]
    return min(found) if found else None


def render(info: dict) -> str:
    lines = ["phonerec run summary", ""]
    for name, c in info["corpus"].items():
        kind = "labelled" if c["labelled"] else "unlabelled"
        lines.append(f"  corpus {name:<18} {c['utterances']:>7,} utts  {c['hours']:7.2f} h  {c['shards']:>4} shards"
                     f"  {c['rejected']} rejected  ({kind})")
    if info["model"]:
        mdl = info["model"]
        extra = " ".join(f"{k}={v}" for k, v in mdl["overrides"].items())
        lines.append(f"  model     preset {mdl['preset']}{' ' + extra if extra else ''}, "
                     f"{(mdl['parameters'] or 0) / 1e6:.2f} M parameters")
    t = info["train"]
    if t:
        lines.append(f"  training  {t['epochs']} epochs, {t['steps']} steps on {t['world']} rank(s) in "
                     f"{_fmt_seconds(t['seconds'])}, {t['frames_per_s']:,} frames/s, "
                     f"padding efficiency {t['padding_efficiency']:.3f}")
    ev = info["evaluate"]
    if ev:
        lines.append(f"  {info['split']}  {ev['utterances']} utts, {ev['phonemes']} phonemes: "
                     f"greedy distance {ev['greedy_distance']:.2f} (PER {100 * ev['greedy_per']:.2f}%), "
                     f"beam {ev.get('beam_width', '?')} distance {ev['beam_distance']:.2f} "
                     f"(PER {100 * ev['beam_per']:.2f}%)")
        if ev.get("lm_per") is not None:
            lines.append(f"  {' ' * len(info['split'])}  beam {ev.get('beam_width', '?')} + LM {ev.get('lm')} (alpha "
                         f"{ev.get('alpha'):g}, beta {ev.get('beta'):g}) distance {ev['lm_distance']:.2f} "
                         f"(PER {100 * ev['lm_per']:.2f}%){'' if ev.get('use_lm', True) else ': did not help, not used'}")
    for name, v in (info.get("voices") or {}).items():
        lines.extend(_voice_lines(name, v))
    if info["submission"]:
        lines.append(f"  submission {info['submission']['path']} ({info['submission']['rows']} rows)")
    if info["plots"]:
        lines.append(f"  plots     {', '.join(info['plots'])}")
    return "\n".join(lines)


def _per(x: float | None) -> str:
    return "    -  " if x is None else f"{100 * x:5.2f}%"


def _voice_lines(split: str, v: dict) -> list[str]:
    """A split's lines per kind of voice (* marks those its target pools) and its target line, or
    why its files could not be scored."""
    if "problem" in v:
        return [f"  {split} by kind of voice: not scored: {v['problem']}"]
    out = [f"  {split} by kind of voice (scored from {v['source']}):"]
    t = v.get("target") or {"kinds": []}
    lm = any(k.get("lm_per") is not None for k in v["kinds"].values())
    for kind, k in v["kinds"].items():
        mark = "*" if kind in t["kinds"] else " "
        out.append(f"    {mark} {kind:<30} {k['utterances']:>4} utts {k['phonemes']:>6,} phonemes: "
                   f"greedy PER {_per(k['greedy_per'])}  beam PER {_per(k['beam_per'])}"
                   + (f"  beam + LM PER {_per(k.get('lm_per'))}" if lm else ""))
    if t["kinds"]:
        what = "beam + LM" if t.get("lm_per") is not None else "beam"
        out.append(f"      target: {what} PER of the kinds marked * <= {100 * t['goal_per']:.0f}%: "
                   f"{100 * t['final_per']:.2f}%, {'met' if t['met'] else 'NOT met'}")
    return out


@click.command("summary", cls=FieldCommand)
@click_options(SummaryConfig)
def summary(**params):
    """A short report of a run: corpus size, padding efficiency, training time, dev distance
    (greedy and beam) and where the plots are. Also written to <results>/summary.json."""
    from pipeline.atomic import write_json

    cfg = make_config(SummaryConfig, params)
    info = collect(cfg.shards, cfg.weights, cfg.results, cfg.split, cfg.data or None)
    if Path(cfg.results).is_dir():
        write_json(Path(cfg.results) / "summary.json", info)
    click.echo(json.dumps(info, indent=1) if cfg.json else render(info))
