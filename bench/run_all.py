"""The benchmark suite: preprocessing, loader + training vs the per-file baselines, decoding.

Usage (from the repository root; ``make bench`` runs it):
  python -m bench.run_all [--quick] [--scale] [--work /tmp/phonerec-bench] [--out results]
                          [--decode auto|run|skip] [--no-preprocessing] [--no-remote]

1. Preprocessing (``bench/bench_shards.py``): generated corpora of 7,135 and 28,539 training
   utterances (a quarter of / all of train-clean-100; ``--scale`` adds 132,553), ``phonerec shards``
   timed with peak memory; the shards are kept under ``--work`` for step 2. Existing corpora
   under ``--work`` (``corpus-<N>``) are reused; shards are rebuilt (that is what is measured).
2. Loader and training (``bench/bench_loader.py``) on the 28,539 corpus: ours vs
   ``baseline_lazy`` / ``baseline_memory``; plus a loader-only run on the 7,135 corpus for peak
   memory vs corpus size, and with ``--scale`` the full comparison on the 132,553 corpus.
   Beside it (``bench/bench_remote.py``; ``--no-remote`` skips it): ours' loader on the same plan
   reading the 28,539 corpus' shards from local disk, over HTTP from a server on 127.0.0.1 the
   benchmark starts and stops, and over HTTP with a shard cache (cold, then warm): frames/s and
   the ratio to local disk, with the delivered batches checked identical.
3. The training step (``bench/bench_train.py``): two epochs of the demo recipe with the settings
   before issue 28 and with today's, each in its own process: frames/s, CPU seconds per epoch,
   system time, page faults, dev PER; the ratio of epochs per CPU-hour (about 5 min; ``--no-train``
   skips it, ``--train-data RAW`` runs it on a given corpus, e.g. the demo's).
4. Decoding (``bench/bench_decode.py``): the torch search against fast-ctc-decode and a numpy
   reference search at widths 1/10/50/100 (about 6 minutes on a 2-core machine, most of it the
   other two decoders at width 100), so ``--decode auto`` (default) reuses a full
   ``OUT/bench_decode.json`` when there is one and runs it otherwise; ``--decode run`` always runs it.
   ``--quick`` runs its quick variant. ``--decode-model SHARDS WEIGHTS`` adds the PER rows on a
   trained checkpoint's dev split (greedy, beam 10/50, with and without a phone LM).

Outputs: ``OUT/bench.json`` (everything), ``OUT/bench.md`` (tables), ``OUT/bench-summary.json`` (the
ratio rows: one per benchmark, with ``lscpu``'s model name, the date and the commit; ``bench/report.py``),
``OUT/bench_lengths.png`` (training-split length histogram with the shard boundaries), ``OUT/bench_bars.png``
(ours vs baselines), and ``OUT/bench_shards.json`` / ``OUT/bench_decode.json`` / ``OUT/bench_loader.json``
as the individual scripts write them (not in ``--quick`` mode, whose tiny-corpus figures never
replace real ones). ``--quick`` uses tiny corpora (seconds; the test suite runs it).

A full run (not ``--quick``, not ``--no-readme``) then merges its ratio rows into ``docs/bench-last.json``
and rewrites the README's performance table from it (``python -m bench.report``; temp file + rename):
the README's figures are generated, never copied by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from bench import ROOT, bench_decode, bench_loader, bench_remote, bench_shards, bench_train
from bench import report as summary_report
from bench.bench_shards import TRAIN, ensure_corpus
from pipeline import manifest as mf
from pipeline.atomic import write_text
from pipeline.features import FRAME_RATE, hours

SMALL, MAIN, SCALE = 7135, 28539, 132553
QUICK_MAIN, QUICK_SCALE = 160, 320


def machine_info() -> dict:
    model = summary_report.lscpu_model()
    total_mb = bench_loader.meminfo_mb("MemTotal")
    ram_gb = round(total_mb / 1024, 1) if total_mb is not None else None
    import torch
    return {"cpus": os.cpu_count(), "cpu_model": model, "ram_gb": ram_gb, "os": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def ensure_shards(work: Path, n: int, workers: int = 2, log=print) -> tuple[Path, Path]:
    """corpus-<n> and shards-<n> under work: generated / built only when missing or stale."""
    from pipeline.build import build

    data, shards = ensure_corpus(work, n, workers, log=log), work / f"shards-{n}"
    build(data, shards, train=TRAIN, dev="dev-clean", test="test-clean", workers=workers, progress=False,
          log=lambda _m: None)     # a no-op rerun when the shards are current
    return data, shards


def _write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=1, default=float) + "\n")


# ------------------------------------------------------------------------------------------ the stages

def preprocessing(sizes: list[int], work: Path, out: Path, skip: bool, quick: bool, log=print) -> dict | None:
    if skip:
        path = out / "bench_shards.json"
        if path.is_file():
            res = json.loads(path.read_text())
            res["source"] = f"reused {path} (--no-preprocessing)"
            return res
        return None
    log(f"== preprocessing: bench_shards sizes {sizes}")
    res = bench_shards.run(sizes, work, workers=2, keep=True)
    if not quick:                 # quick figures never replace the real ones
        _write_json(out / "bench_shards.json", res)
    return res


def decoding(mode: str, quick: bool, out: Path, log=print, model=None) -> dict | None:
    path = out / "bench_decode.json"
    if mode == "skip":
        return None
    if model:
        mode = "run"
    if mode == "auto" and not quick and path.is_file():
        res = json.loads(path.read_text())
        if not res.get("config", {}).get("quick"):
            mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
            res["source"] = f"reused {path} (written {mtime}); rerun with --decode run"
            res["written"] = mtime          # the README's table dates these rows by it
            log(f"== decoding: reusing {path}")
            return res
    log(f"== decoding: bench_decode {'quick' if quick else 'full'}")
    res = bench_decode.run(quick=quick, log=lambda *a: None)
    res["markdown"] = bench_decode.markdown(res)
    if model:
        log(f"== decoding: a trained model's dev split ({model[1]})")
        res["model"] = bench_decode.model_rows(*model, log=lambda *a: None)
        res["model"]["markdown"] = bench_decode.model_markdown(res["model"])
    if not quick:
        res["commit"] = summary_report.git_commit()
        _write_json(path, res)
    return res


def training_step(work: Path, out: Path, quick: bool, data: Path | None, log=print) -> dict:
    log(f"== training step: bench_train {'quick' if quick else 'full'}")
    res = bench_train.run(data, work=work, quick=quick, log=log)
    res["markdown"] = bench_train.markdown(res)
    if not quick:
        _write_json(out / "bench_train.json", res)
    return res


def loader_runs(work: Path, main_n: int, small_n: int | None, scale_n: int | None, quick: bool,
                log=print, remote: bool = True) -> dict:
    data, shards = ensure_shards(work, main_n, log=log)
    log(f"== loader + training: {main_n:,} training utterances")
    main = bench_loader.run(data, shards, quick=quick, log=log)
    out = {"main": main, "memory_points": [], "scale": None, "remote": None}
    if remote:      # ours' loader again, same plan and cap: local disk vs HTTP on 127.0.0.1 vs HTTP + cache
        out["remote"] = bench_remote.run(shards, main["config"], quick=quick, cache_root=work, log=log)
    if small_n:
        d, s = ensure_shards(work, small_n, log=log)
        log(f"== loader memory, {small_n:,} training utterances")
        small = bench_loader.run(d, s, quick=quick, log=log, train_steps=0, loader_w0=False, loader_cold=False,
                                 batches=min(100, main["config"]["batches"]), seconds=20.0)
        out["memory_points"].append(small)
    out["memory_points"].append(main)
    if scale_n:
        d, s = ensure_shards(work, scale_n, log=log)
        log(f"== loader + training (scale): {scale_n:,} training utterances")
        out["scale"] = bench_loader.run(d, s, quick=quick, log=log)
        out["memory_points"].append(out["scale"])
    return out


def memory_scaling(points: list[dict]) -> list[dict]:
    rows = []
    for p in points:
        row = {"train_utterances": p["corpus"]["utterances"], "frames": p["corpus"]["frames"]}
        for s in bench_loader.SYSTEMS:
            row[s] = p.get(s, {}).get("peak_rss_mb")
        rows.append(row)
    return rows


def memory_goal(rows: list[dict]) -> dict:
    """Ours bounded: peak grows <= 25 % while the corpus grows >= 4x; the in-memory baseline's growth shown."""
    if len(rows) < 2 or any(r["ours"] is None for r in (rows[0], rows[-1])):
        return {"met": None, "rule": "needs two corpus sizes"}
    a, b = rows[0], rows[-1]
    g = {"corpus_growth": b["frames"] / a["frames"], "ours_growth": b["ours"] / a["ours"],
         "ours_mb_per_10k_utterances": (b["ours"] - a["ours"]) / (b["train_utterances"] - a["train_utterances"]) * 1e4}
    if a.get("baseline_memory") and b.get("baseline_memory"):
        g["memory_baseline_growth"] = b["baseline_memory"] / a["baseline_memory"]
        g["memory_baseline_mb_per_10k_utterances"] = ((b["baseline_memory"] - a["baseline_memory"]) /
                                                      (b["train_utterances"] - a["train_utterances"]) * 1e4)
    g["rule"] = "ours' peak grows by at most 25 % from the smallest to the largest corpus"
    g["met"] = g["ours_growth"] <= 1.25
    return g


# ---------------------------------------------------------------------------------------------- plots

SYSTEM_LABELS = {"ours": "ours (shards)", "baseline_lazy": "baseline lazy", "baseline_memory": "baseline in-memory"}
COLORS = {"ours": "#1f77b4", "baseline_lazy": "#ff7f0e", "baseline_memory": "#2ca02c"}


def plot_lengths(shards: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = mf.load(shards, TRAIN)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for k, s in enumerate(m.shards):
        ax.axvspan(s.min_frames, s.max_frames + 0.999, color="#cccccc" if k % 2 else "#e8e8f4", lw=0, zorder=0)
        ax.axvline(s.min_frames, color="#555555", lw=0.4, alpha=0.7, zorder=1)
    ax.axvline(m.shards[-1].max_frames, color="#555555", lw=0.4, alpha=0.7, zorder=1)
    ax.hist(m.frames, bins=np.arange(0, int(m.frames.max()) + 26, 25), color="#1f77b4", zorder=2)
    ax.set_yscale("log")
    ax.set_xlabel(f"utterance length (frames, {FRAME_RATE} per second)")
    ax.set_ylabel("utterances per 25-frame bin (log)")
    ax.set_title(f"{m.split}: {m.num_utterances:,} utterances, {hours(m.total_frames):.1f} h; "
                 f"{len(m.shards)} shards (bands = each shard's min..max length)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(main: dict, mem_rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    systems = [s for s in bench_loader.SYSTEMS if isinstance(main.get(s), dict)]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))

    def bars(ax, keys, labels, title, fmt, log=False):
        width = 0.8 / len(systems)
        x = np.arange(len(keys))
        for i, s in enumerate(systems):
            vals = [main[s].get(k) for k in keys]
            vals = [v if isinstance(v, (int, float)) and math.isfinite(v) else 0 for v in vals]
            rects = ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, label=SYSTEM_LABELS[s],
                           color=COLORS[s])
            ax.bar_label(rects, [fmt.format(v) if v else "–" for v in vals], fontsize=7, rotation=90,
                         padding=2)
        ax.set_xticks(x, labels)
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.margins(y=0.25)

    bars(axes[0], ["padding_efficiency"], ["one epoch"], "padding efficiency (real / padded)", "{:.3f}")
    axes[0].set_ylim(0, 1.25)
    bars(axes[1], ["loader_frames_per_s", "loader_frames_per_s_w0", "loader_frames_per_s_cold"],
         ["2 workers", "0 workers", "2 workers,\ncold page cache"],
         "loader throughput (frames/s, log)", "{:,.0f}", log=True)
    bars(axes[2], ["train_frames_per_s"], ["default model, CPU"], "training throughput (real frames/s)",
         "{:,.0f}")
    ax = axes[3]
    x = np.arange(len(mem_rows))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [r.get(s) or 0 for r in mem_rows]
        rects = ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, color=COLORS[s], label=SYSTEM_LABELS[s])
        ax.bar_label(rects, [f"{v:,.0f}" if v else "–" for v in vals], fontsize=7, rotation=90, padding=2)
    ax.set_xticks(x, [f"{r['train_utterances']:,} utts" for r in mem_rows])
    ax.set_title("peak memory, loader + workers (MB)", fontsize=10)
    ax.margins(y=0.25)
    axes[0].legend(fontsize=8, loc="lower center")
    n = main["corpus"]["utterances"]
    fig.suptitle(f"ours vs per-file baselines, {n:,} training utterances (same corpus, model and machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- markdown

def _goal_lines(goals: dict) -> list[str]:
    lines = []
    for name, g in goals.items():
        verdict = {True: "met", False: "**not met**", None: "not measured"}[g.get("met")]
        detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in g.items() if k != "met" and v is not None)
        lines.append(f"- `{name}`: {verdict} ({detail})")
    return lines


def _loader_section(res: dict, title: str) -> list[str]:
    c = res["corpus"]
    cfg = res["config"]
    lines = [f"## {title}", "",
             f"Corpus: {c['utterances']:,} training utterances, {c['frames']:,} frames ({c['hours']:.1f} h), "
             f"{c['shards']} shards. Baseline batch size {cfg['baseline_batch_size']} "
             f"({cfg['baseline_batch_size_rule']}); ours: frame budget {cfg['max_frames']:,}, at most "
             f"{cfg['max_utts']} utterances. Loader runs: first {cfg['batches']} batches or {cfg['seconds']:g} s; "
             f"training: {cfg['train_steps']} timed steps after {cfg['warmup_steps']} warm-up, "
             f"`{cfg['preset']}` model, torch threads {cfg['threads']}, {cfg['workers']} DataLoader workers.", "",
             bench_loader.markdown(res), ""]
    cont = [f"{s}: {res[s]['contention']['other_cpus']:.1f}" for s in bench_loader.SYSTEMS
            if isinstance(res.get(s), dict) and "contention" in res[s]]
    if cont:
        lines += [f"Cores busy with other jobs during each run (average): {', '.join(cont)}.", ""]
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    lines += ["Goals:", "", *_goal_lines(res["goals"]), ""]
    return lines


WIDE = 28          # the later editions' width, compared with F22's 15


def widths(work: Path, n: int, pre: dict | None, main: dict, quick: bool, log=print) -> dict:
    """The cost of a wider frame: a corpus of the same utterances at WIDE features per frame,
    preprocessed and streamed as the 15-wide one was (preprocessing row and loader run reused)."""
    log(f"== feature width: {n:,} training utterances at {WIDE} features per frame")
    wide_pre = bench_shards.run([n], work, workers=2, keep=True, dim=WIDE)["runs"][0]
    narrow_pre = next((r for r in (pre or {}).get("runs", []) if r["train_utterances"] == n), None)
    data = bench_shards.ensure_corpus(work, n, dim=WIDE)
    wide = bench_loader.run(data, work / f"shards-{bench_shards.suffix(n, WIDE)}", quick=quick, log=log,
                            train_steps=0, loader_cold=False, systems=("ours",))
    rows = []
    for dim, p, ld in ((15, narrow_pre, main), (WIDE, wide_pre, wide)):
        ours = ld.get("ours", {})
        rows.append({"feature_dim": dim, "shard_mb": p and p["shard_mb"], "preprocessing_utts_per_s": p and p["utts_per_s"],
                     "loader_frames_per_s": ours.get("loader_frames_per_s"),
                     "loader_frames_per_s_w0": ours.get("loader_frames_per_s_w0")})
    return {"train_utterances": n, "rows": rows}


def _widths_section(res: dict) -> list[str]:
    a, b = res["rows"]
    ratio = lambda k: f"{b[k] / a[k]:.2f}" if a.get(k) and b.get(k) else "–"   # noqa: E731
    fmt = lambda v, f: "–" if v is None else f.format(v)                      # noqa: E731
    lines = [f"## Feature width: {a['feature_dim']} vs {b['feature_dim']} per frame "
             f"({res['train_utterances']:,} training utterances, the same lengths)", "",
             f"| figure | {a['feature_dim']} | {b['feature_dim']} | ratio |", "|---|---:|---:|---:|"]
    for key, label, f in (("shard_mb", "shard MB", "{:,}"), ("preprocessing_utts_per_s", "preprocessing utterances/s",
                                                                 "{:,.1f}"),
                          ("loader_frames_per_s", "loader frames/s, 2 workers", "{:,.0f}"),
                          ("loader_frames_per_s_w0", "loader frames/s, 0 workers", "{:,.0f}")):
        lines.append(f"| {label} | {fmt(a.get(key), f)} | {fmt(b.get(key), f)} | {ratio(key)} |")
    return lines + [""]


def _remote_section(res: dict, ours: dict | None) -> list[str]:
    cfg, local = res["config"], res["passes"]["local"]
    compared = sorted({p["compared_batches"] for p in res["passes"].values()})
    lines = ["## Loader over HTTP (127.0.0.1)", "",
             f"Ours' loader on the same plan as above (epoch 0, seed {cfg['seed']}, {cfg['workers']} workers, frame "
             f"budget {cfg['max_frames']:,}; first {cfg['batches']} batches or {cfg['seconds']:g} s per pass), one "
             f"pass after another in one fresh process: shards from the local folder, then from `{res['url']}` "
             f"({res['server']}) serving that folder, then over HTTP with a shard cache folder that the first pass "
             f"fills (cold) and the second reads (warm); the four passes {cfg['rounds']} time(s) in turn, each "
             "figure its fastest round. bench/bench_remote.py.", "",
             bench_remote.markdown(res), "",
             "The server runs on the same machine: the ratios are the cost of the HTTP path (client, server, copies, "
             "checksums, the cache's writes), not of a real network.", "",
             f"Batches delivered identical to local disk's in every pass (crc32 of rows, lengths, labels and features "
             f"of {'/'.join(str(n) for n in compared)} batches): {'yes' if res['same_batches'] else '**NO**'}; "
             f"that crc32 took {local['check_s'] / max(local['seconds'], 1e-9):.0%} of the local pass's time "
             "(every pass pays it)."]
    lf = (ours or {}).get("loader_frames_per_s")
    if isinstance(lf, (int, float)):
        lines += ["", f"Ours' 2-worker loader figure above (its own process, no crc32): {lf:,.0f} frames/s."]
    return lines + [""]


def markdown(report: dict) -> str:
    mach = report["machine"]
    lines = ["# phonerec benchmarks", "",
             f"Machine: {mach['cpus']} CPUs ({mach['cpu_model']}), {mach['ram_gb']} GB RAM, Python {mach['python']}, "
             f"torch {mach['torch']}; load average at start {mach['loadavg_at_start']}.", "",
             f"Command: `{report['command']}` (wall time {report['wall_s'] / 60:.1f} min, {report['date']}).", ""]
    lines += _loader_section(report, "Loader and training: ours vs per-file baselines")
    if report.get("remote"):
        lines += _remote_section(report["remote"], report.get("ours"))
    rows = report.get("memory_scaling") or []
    if len(rows) >= 2:
        lines += ["## Peak memory vs corpus size (loader + workers, PSS, MB)", "",
                  "| train utterances | frames | ours | baseline lazy | baseline in-memory |",
                  "|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['train_utterances']:,} | {r['frames']:,} | "
                         + " | ".join(f"{r[s]:,.0f}" if r.get(s) else "–" for s in bench_loader.SYSTEMS) + " |")
        lines += ["", *_goal_lines({"peak_memory_bounded": report["goals"]["peak_memory_bounded"]}), ""]
    if report.get("scale"):
        lines += _loader_section(report["scale"],
                                 f"Scale run: {report['scale']['corpus']['utterances']:,} training utterances")
    if report.get("widths"):
        lines += _widths_section(report["widths"])
    pre = report.get("preprocessing")
    if pre:
        lines += ["## Preprocessing (`phonerec shards`, bench/bench_shards.py, 2 workers)", "",
                  bench_shards.table(pre), ""]
        if pre.get("source"):
            lines += [f"({pre['source']})", ""]
    step = report.get("training_step")
    if step:
        lines += [f"## The training step (bench/bench_train.py, {step['config']['recipe']}, "
                  f"{step['config']['epochs']} epochs on {step['config']['data']})", "", step["markdown"], ""]
    dec = report.get("decoding")
    if dec:
        cfg = dec["config"]
        lines += [f"## Decoding (bench/bench_decode.py, [{cfg['batch']}, {cfg['frames']}, {cfg['classes']}] "
                  "peaked random posteriors)", "", dec.get("markdown") or bench_decode.markdown(dec), ""]
        lines += [f"- {n}" for n in dec.get("notes", [])]
        if dec.get("source"):
            lines += [f"- {dec['source']}"]
        lines.append("")
        if dec.get("model"):
            cfg = dec["model"]["config"]
            lines += [f"### Real model output: {cfg['weights']} on {cfg['split']} ({cfg['utterances']} utterances)", "",
                      dec["model"]["markdown"], "", f"- {cfg['note']}", ""]
    lines += ["Definitions: see the docstring of bench/bench_loader.py. Timings on a shared machine vary with "
              "other jobs; the contention line above shows how busy it was.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny corpora and short runs (seconds; for tests)")
    ap.add_argument("--scale", action="store_true", help=f"also the {SCALE:,}-utterance corpus (about 12 GB raw)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phonerec-bench"), help="corpus and shard cache")
    ap.add_argument("--out", type=Path, default=ROOT / "results", help="results folder")
    ap.add_argument("--decode", choices=("auto", "run", "skip"), default="auto",
                    help="auto: reuse a full OUT/bench_decode.json if present, else run it (about 6 min)")
    ap.add_argument("--decode-model", nargs=2, metavar=("SHARDS", "WEIGHTS"),
                    help="also decode a trained checkpoint's dev split: PER without and with a phone LM")
    ap.add_argument("--no-widths", action="store_true",
                    help=f"skip the {WIDE}-features-per-frame corpus (its preprocessing and loader run)")
    ap.add_argument("--no-preprocessing", action="store_true",
                    help="skip bench_shards (reuse OUT/bench_shards.json and existing shards)")
    ap.add_argument("--no-train", action="store_true", help="skip the training-step row (bench_train)")
    ap.add_argument("--train-data", type=Path, help="raw corpus for the training-step row (default: generated)")
    ap.add_argument("--no-remote", action="store_true",
                    help="skip the loader over HTTP on 127.0.0.1 (bench_remote: local disk vs HTTP vs HTTP + cache)")
    ap.add_argument("--no-readme", action="store_true",
                    help="leave docs/bench-last.json and the README's performance table as they are")
    ap.add_argument("--readme", type=Path, default=summary_report.README, help=argparse.SUPPRESS)
    ap.add_argument("--summary-json", type=Path, default=summary_report.LAST, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    t0 = time.time()
    command = " ".join(["python", "-m", "bench.run_all", *(argv if argv is not None else sys.argv[1:])])
    # --quick: one tiny size (seconds); --quick --scale adds a second one
    small, main_n, scale = (None, QUICK_MAIN, QUICK_SCALE) if a.quick else (SMALL, MAIN, SCALE)
    scale = scale if a.scale else None
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"command": command, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_info()}

    sizes = [n for n in (small, main_n, scale) if n]
    pre = preprocessing(sizes, a.work, a.out, a.no_preprocessing, a.quick)
    loaders = loader_runs(a.work, main_n, small, scale, a.quick, remote=not a.no_remote)
    dec = decoding(a.decode, a.quick, a.out, model=a.decode_model)
    if not a.no_train:
        report["training_step"] = training_step(a.work, a.out, a.quick, a.train_data)
    if not a.no_widths:
        report["widths"] = widths(a.work, main_n, pre, loaders["main"], a.quick)

    main_res = loaders["main"]
    report.update({k: main_res[k] for k in ("corpus", "config", *bench_loader.SYSTEMS, "notes") if k in main_res})
    report["memory_scaling"] = memory_scaling(loaders["memory_points"])
    report["goals"] = {**main_res["goals"], "peak_memory_bounded": memory_goal(report["memory_scaling"])}
    if loaders["scale"]:
        report["scale"] = loaders["scale"]
    if loaders["remote"]:
        report["remote"] = loaders["remote"]
    report["preprocessing"] = pre
    report["decoding"] = dec
    if not a.quick:
        _write_json(a.out / "bench_loader.json", loaders)
    main_shards = Path(main_res["corpus"]["shards_dir"])
    plot_lengths(main_shards, a.out / "bench_lengths.png")
    plot_bars(main_res, report["memory_scaling"], a.out / "bench_bars.png")
    report["plots"] = ["bench_lengths.png", "bench_bars.png"]
    report["wall_s"] = time.time() - t0
    report["summary"] = summary_report.summary(report)
    _write_json(a.out / "bench.json", report)
    _write_json(a.out / "bench-summary.json", report["summary"])
    (a.out / "bench.md").write_text(markdown(report))
    print(f"\nwrote {a.out / 'bench.json'}, {a.out / 'bench-summary.json'}, {a.out / 'bench.md'}, "
          f"{a.out / 'bench_lengths.png'}, {a.out / 'bench_bars.png'} in {report['wall_s'] / 60:.1f} min")
    if not (a.quick or a.no_readme):          # quick figures never replace real ones
        summary_report.publish(report["summary"], a.summary_json, a.readme)
        print(f"rewrote the performance table of {a.readme} from {a.summary_json}")
    return report


if __name__ == "__main__":
    main()
