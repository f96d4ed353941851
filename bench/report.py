"""The README's performance summary: one table of the benchmark's ratios, generated, never hand-edited.

``make bench`` (``python -m bench.run_all``) ends by calling this module: it takes the ratio rows out
of its full report (``summary``), writes them to ``OUT/bench-summary.json``, merges them into
``docs/bench-last.json`` (the committed copy; a row the run did not measure keeps its previous
figures and says where they came from) and rewrites the block between ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` in README.md from that file (temp file + rename). ``tests/test_readme.py``
checks that the README's block is exactly the rendering of the committed JSON, so a hand edit fails.

Usage (from the repository root):
  python -m bench.report                       # README's block from docs/bench-last.json
  python -m bench.report --check               # exit 1 if README's block is not that rendering
  python -m bench.report --from-bench results/bench.json   # a full run's report: rows into the JSON, then README

The JSON: ``{"cpu", "cpus", "date", "commit", "note"?, "rows": [...]}``; each row ``{"name", "what",
"unit", "value", "baseline_value", "ratio", "baseline", "better"}`` (``ratio`` is value ÷
baseline_value as the benchmark computed it; ``better`` is "higher" or "lower"), and optionally its
own ``cpu``/``date``/``commit`` where it was measured apart from the others.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import ROOT

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
README = ROOT / "README.md"
LAST = ROOT / "docs" / "bench-last.json"
SOURCE_KEYS = ("cpu", "date", "commit")
LAZY = "lazy per-file loader"
IN_MEMORY = "in-memory per-file loader"


# ------------------------------------------------------------------------------------- the machine

def lscpu_model() -> str:
    """lscpu's "Model name" (/proc/cpuinfo's "model name" where lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name" and value.strip():
                return value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_commit(root: Path = ROOT) -> str:
    """The short commit of the checkout, '+changes' when tracked files differ from it."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root, capture_output=True,
                               timeout=30, check=False).returncode != 0
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------ rows out of a full report

def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _row(name, what, unit, value, base, baseline, better="higher", ratio=None, **extra) -> dict | None:
    value, base, ratio = _num(value), _num(base), _num(ratio)
    if ratio is None and value is not None and base:
        ratio = value / base
    if ratio is None:
        return None
    return {"name": name, "what": what, "unit": unit, "value": value, "baseline_value": base, "ratio": ratio,
            "baseline": baseline, "better": better, **extra}


def loader_rows(rep: dict) -> list[dict | None]:
    ours, lazy, mem = (rep.get(k) or {} for k in ("ours", "baseline_lazy", "baseline_memory"))
    n = (rep.get("corpus") or {}).get("utterances")
    on = f", {n:,} training utterances" if n else ""
    rows = [_row("padding", f"padding efficiency (real / padded frames){on}", "fraction",
                 ours.get("padding_efficiency"), lazy.get("padding_efficiency"), LAZY)]
    for key, what in (("loader_frames_per_s", "loader, 2 workers"), ("loader_frames_per_s_w0", "loader, 0 workers"),
                      ("loader_frames_per_s_cold", "loader, 2 workers, page cache evicted")):
        rows.append(_row(key.replace("_frames_per_s", ""), what, "frames/s", ours.get(key), lazy.get(key), LAZY))
    rows += [_row("training", "training, `default` model on the CPU (real frames)", "frames/s",
                  ours.get("train_frames_per_s"), lazy.get("train_frames_per_s"), LAZY),
             _row("training_memory", "peak memory while training (PSS)", "MB", ours.get("train_peak_rss_mb"),
                  lazy.get("train_peak_rss_mb"), LAZY, "lower"),
             _row("first_batch", "first batch from a fresh process", "s", ours.get("first_batch_s"),
                  mem.get("first_batch_s"), IN_MEMORY, "lower"),
             _row("loader_memory", "peak memory, loader + workers (PSS)", "MB", ours.get("peak_rss_mb"),
                  mem.get("peak_rss_mb"), IN_MEMORY, "lower")]
    pts = rep.get("memory_scaling") or []
    if len(pts) >= 2:
        a, b = pts[0], pts[-1]
        growth = b["frames"] / a["frames"] if a.get("frames") else None
        rows.append(_row("memory_growth", f"peak loader memory, {b['train_utterances']:,} vs "
                         f"{a['train_utterances']:,} training utterances ({growth:.1f}× the frames)" if growth else
                         "peak loader memory, largest vs smallest corpus", "MB", b.get("ours"), a.get("ours"),
                         "ours on the smaller corpus", "lower"))
    return rows


def other_rows(rep: dict) -> list[dict | None]:
    rows = []
    remote = rep.get("remote") or {}
    for name, what in (("http", "loader over HTTP (127.0.0.1), no cache"),
                       ("http_cache_cold", "loader over HTTP + shard cache, first pass"),
                       ("http_cache_warm", "loader over HTTP + shard cache, later passes")):
        rows.append(_row(name, what, "frames/s", remote.get(f"loader_frames_per_s_{name}"),
                         remote.get("loader_frames_per_s_local"), "the same loader on local disk",
                         ratio=remote.get(f"{name}_over_local")))
    wide = (rep.get("widths") or {}).get("rows") or []
    if len(wide) == 2:
        a, b = wide
        base = f"the same corpus at {a['feature_dim']} features per frame"
        rows += [_row("width_shard_mb", f"shard size at {b['feature_dim']} features per frame", "MB",
                      b.get("shard_mb"), a.get("shard_mb"), base, "lower"),
                 _row("width_loader", f"loader, 2 workers, {b['feature_dim']} features per frame", "frames/s",
                      b.get("loader_frames_per_s"), a.get("loader_frames_per_s"), base)]
    rows.append(step_row(rep.get("training_step") or {}))
    dec = rep.get("decoding") or {}
    for r in dec.get("rows", []):           # one thread, as the decoder's target is stated (docs/results.md: 2)
        if r.get("decoder") == "torch (ours)" and r.get("beam_width") in (10, 50) and r.get("threads") == 1:
            family = r.get("family", "peaked")
            fast = next((f for f in dec["rows"] if f.get("decoder") == "fast-ctc-decode"
                         and f.get("family", "peaked") == family
                         and f.get("beam_width") == r["beam_width"] and f.get("threads") == r["threads"]), {})
            rows.append(_row(f"decode_{family}_w{r['beam_width']}_t1",
                             f"beam search + exact re-ranking, {family} posteriors, width {r['beam_width']}, 1 thread",
                             "utterances/s",
                             r.get("utt_per_s"), fast.get("utt_per_s"), "fast-ctc-decode, same width and threads",
                             ratio=r.get("x_fast"), **decode_source(dec)))
    return rows


def step_row(step: dict) -> dict | None:
    rows = step.get("rows") or []
    if len(rows) != 2 or not step.get("ratio_epochs_per_cpu_hour"):
        return None
    before, today = rows
    per_hour = lambda r: 3600.0 / r["cpu_s"] if r.get("cpu_s") else None   # noqa: E731
    return _row("train_step", "training step, CPU demo recipe: epochs per CPU-hour", "epochs/CPU-h",
                per_hour(today), per_hour(before),
                f"the code and recipe before issue 28 ({step.get('config', {}).get('before', '?')})",
                ratio=step["ratio_epochs_per_cpu_hour"])


def decode_source(dec: dict) -> dict:
    """Decoding reused from an earlier OUT/bench_decode.json keeps that run's date, CPU and commit."""
    if not dec.get("written"):
        return {}
    cpu = str(dec.get("config", {}).get("cpu", "unknown")).split(" (")[0]
    return {"cpu": cpu, "date": dec["written"], "commit": dec.get("commit") or "unknown"}


def summary(rep: dict, *, cpu: str | None = None, commit: str | None = None) -> dict:
    """The ratio rows of a full bench report (bench.json), with the machine, date and commit."""
    rows = [r for r in loader_rows(rep) + other_rows(rep) if r is not None]
    mach = rep.get("machine") or {}
    return {"cpu": cpu or mach.get("cpu_model") or lscpu_model(), "cpus": mach.get("cpus"), "date": rep.get("date"),
            "commit": commit or git_commit(), "command": rep.get("command"), "rows": rows}


def merge(new: dict, old: dict | None) -> dict:
    """new's rows, then old's rows that new lacks (each keeping where and when it was measured)."""
    if not old:
        return new
    have = {r["name"] for r in new["rows"]}
    kept = [{**{k: old.get(k) for k in SOURCE_KEYS}, **r} for r in old.get("rows", []) if r["name"] not in have]
    out = {k: v for k, v in new.items() if k != "note"}
    out["rows"] = list(new["rows"]) + kept
    return out


# -------------------------------------------------------------------------------------- rendering

def fmt(v: float | None) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:,.1f} M"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}" if a >= 1 else f"{v:.3f}"


def _source(d: dict) -> tuple:
    return tuple(d.get(k) for k in SOURCE_KEYS)


def _source_text(src: tuple, cpus=None) -> str:
    cpu, date, commit = (s if s else "unknown" for s in src)
    return f"{cpu}, {cpus} CPUs" if cpus else cpu, date, commit


def render(s: dict) -> str:
    """The block's markdown (without the markers): the table, then where and when it was measured."""
    top = _source(s)
    sources = [top]
    for r in s["rows"]:
        src = tuple(r.get(k, t) for k, t in zip(SOURCE_KEYS, top))
        if src not in sources:
            sources.append(src)
    several = len(sources) > 1
    head = "| benchmark | unit | ours | baseline | ours ÷ baseline | better | baseline is |"
    rule = "|---|---|---:|---:|---:|---|---|"
    lines = ["<!-- generated by `python -m bench.report` from docs/bench-last.json: do not edit -->", "",
             head + (" measured |" if several else ""), rule + ("---|" if several else "")]
    for r in s["rows"]:
        src = tuple(r.get(k, t) for k, t in zip(SOURCE_KEYS, top))
        cells = [r["what"], r["unit"], fmt(r.get("value")), fmt(r.get("baseline_value")), f"**{r['ratio']:.2f}**",
                 r.get("better", "higher"), r["baseline"]]
        if several:
            cells.append(f"[{sources.index(src) + 1}]")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if several:
        lines.append("Measured on: " + "; ".join(
            "[{}] {}, {}, commit {}".format(i + 1, *_source_text(src, s.get("cpus") if i == 0 else None))
            for i, src in enumerate(sources)) + ".")
    else:
        lines.append("Measured on {}, {}, commit {}.".format(*_source_text(top, s.get("cpus"))))
    if s.get("note"):
        lines += ["", s["note"]]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """text with everything between the markers replaced by block (the markers kept)."""
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[: i + len(BEGIN)] + "\n" + block.rstrip("\n") + "\n" + text[j:]


def block_of(text: str) -> str:
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[i + len(BEGIN): j].strip("\n")


def write_atomic(path: Path, text: str) -> None:
    """temp file in the same folder + rename: a reader sees the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777)
        except OSError:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_readme(s: dict, readme: Path = README) -> bool:
    """Rewrite README's block from s; True when it changed."""
    text = readme.read_text(encoding="utf-8")
    new = replace_block(text, render(s))
    if new != text:
        write_atomic(readme, new)
    return new != text


def publish(s: dict, last: Path = LAST, readme: Path = README) -> dict:
    """A run's summary merged into the committed JSON, and README's block rewritten from it."""
    old = json.loads(last.read_text()) if last.is_file() else None
    merged = merge(s, old)
    write_atomic(last, json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
    update_readme(merged, readme)
    return merged


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=LAST, help="the summary JSON (default: docs/bench-last.json)")
    ap.add_argument("--readme", type=Path, default=README)
    ap.add_argument("--from-bench", type=Path, metavar="BENCH_JSON",
                    help="a full run's bench.json: its rows merged into --json first")
    ap.add_argument("--check", action="store_true", help="only check that README's block is the rendering")
    a = ap.parse_args(argv)
    if a.from_bench:
        s = publish(summary(json.loads(a.from_bench.read_text())), a.json, a.readme)
    else:
        s = json.loads(a.json.read_text())
    if a.check:
        ok = block_of(a.readme.read_text(encoding="utf-8")) == render(s).strip("\n")
        print(f"{a.readme}: bench block {'matches' if ok else 'DIFFERS from'} {a.json}"
              + ("" if ok else "; run python -m bench.report"))
        return 0 if ok else 1
    changed = update_readme(s, a.readme)
    print(f"{a.readme}: bench block {'rewritten' if changed else 'already current'} from {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
