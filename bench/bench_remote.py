"""The loader reading its shards over HTTP beside local disk: the cost of the network path as a ratio.

Usage (from the repository root):
  python -m bench.bench_remote --shards /tmp/phonerec-bench/shards-28539 [--quick] \\
      [--out results/bench_remote.json]

``run()`` serves the shards folder over HTTP on 127.0.0.1 (bench/httpserve.py: Python's
``ThreadingHTTPServer`` + ``SimpleHTTPRequestHandler`` in a thread of the calling process, a free
port, stopped at the end) and runs, in one fresh subprocess, one pass after another, the loader of
system ``ours`` in bench/bench_loader.py: ``training.plan.plan_epoch`` (epoch 0, the same seed,
BatchOptions and workers) + ``training.data.make_loader``, timed as there (``bench_loader._drain``:
from the DataLoader iterator made to the last of ``batches`` batches or ``seconds``):

- ``local``: the shards read from the folder (the ``loader_frames_per_s`` measurement again, here,
  so that every ratio compares passes of one run under the same load), after an untimed local pass
  that puts the shards it reads in the page cache (the HTTP passes would otherwise find them there
  and the local one not: on a corpus read a while ago that made the warm cache "faster" than disk);
- ``http``: the manifest and the shards from the server (``pipeline.manifest.load(url, ...)``,
  ``ShardSource.create(FetchPolicy(), workers)``: fsspec + aiohttp, retries, the size and crc32 of
  every shard checked), no cache;
- ``http_cache_cold``: the same with ``FetchPolicy(cache=<an empty temporary folder>)``: each shard
  downloaded, checked and written to the cache;
- ``http_cache_warm``: the same plan again: the shards the cold pass cached come from the cache
  folder (checked again), not from the server.

The four passes run ``rounds`` times in turn (default 3; ``--quick``: 1), each round's cold pass
with a new empty cache folder; each pass's figure is its fastest round (on a machine shared with
other jobs, they only ever slow a pass down), every round's frames/s kept beside it.

Figures: ``loader_frames_per_s_<pass>`` and ``loader_utts_per_s_<pass>`` (real frames / utterances
per second delivered), ``<pass>_over_local`` (frames/s ratio to the local pass), and per pass its
batches, seconds and the source's counters (``fetched`` shards, ``cache_hits``, ``retries``,
``refetched``, ``bytes``). ``other_cpus``: cores busy with other jobs during the pass (all busy
CPU time less this benchmark's processes and the server's), as in bench_loader. ``check_s``: the
part of the timed seconds spent on the crc32 below (every pass pays it alike, so the local figure
here is a little below bench_loader's ``loader_frames_per_s``).

The server is on the same machine: the figures are the cost of the HTTP path (the client, the
server, copying and checksums, the cache's writes), not of a real network.

Correctness: every delivered batch's crc32 (manifest rows, lengths, label lengths, labels,
features and their shapes) is kept; ``same_batches`` is true when every round of every pass
delivered exactly the first local round's batches (over the batches both delivered: at least
``compared_batches`` per pass);
``rows_digest`` (sha256 of each batch's manifest rows in order) lets a test compare the local pass
with the plan itself.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from bench import ROOT, httpserve
from bench.bench_loader import QUICK, LoaderBenchConfig, _drain, _machine_busy
from bench.harness import emit, run_child
from pipeline import manifest as mf

PASSES = ("local", "http", "http_cache_cold", "http_cache_warm")
LABELS = {"local": "local disk", "http": "HTTP, no cache", "http_cache_cold": "HTTP + cache, cold (filling it)",
          "http_cache_warm": "HTTP + cache, warm"}
ROUNDS = 3              # each pass this many times in turn; the fastest counts (other jobs only slow a pass down)
SERVER = "Python's http.server.ThreadingHTTPServer + SimpleHTTPRequestHandler, started by the benchmark"


# ------------------------------------------------------------------------------------ child side

def batch_crc(batch) -> int:
    """crc32 of what a loader delivered in one batch: shapes, rows, lengths, labels and features."""
    shapes = np.array([*batch.feats.shape, *batch.labels.shape], dtype=np.int64)
    crc = zlib.crc32(shapes)
    for t in (batch.rows, batch.lengths, batch.label_lengths, batch.labels, batch.feats):
        crc = zlib.crc32(t.contiguous().numpy(), crc)
    return crc


def rows_digest(rows: list[np.ndarray]) -> str:
    """sha256 of a sequence of batches' manifest rows (batch boundaries included)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(np.int64(len(r)).tobytes())
        h.update(np.asarray(r, dtype=np.int64).tobytes())
    return h.hexdigest()


def _recorded(it, crcs: list[int], rows: list[np.ndarray], spent: list[float]):
    """The loader's batches as bench_loader._drain takes them, each one's crc32 and rows recorded
    (the time that takes added to spent[0]: it is inside the timed loop, in every pass alike)."""
    for b in it:
        t = time.perf_counter()
        crcs.append(batch_crc(b))
        rows.append(b.rows.numpy().copy())
        spent[0] += time.perf_counter() - t
        yield b.feats, b.lengths, b.labels, b.label_lengths


def _cpu_seconds() -> float:
    """CPU time of this process, its reaped children (the loader's workers) and its parent (the server)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    try:
        with open(f"/proc/{os.getppid()}/stat") as fh:
            stat = fh.read()
        vals = stat[stat.rindex(")") + 2:].split()
        cpu += (int(vals[11]) + int(vals[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return cpu


def _pass(m: mf.Manifest, cfg: LoaderBenchConfig, source) -> dict:
    """One loader pass over epoch 0's plan: bench_loader's figures, each batch's crc32, the counters."""
    from training.data import make_loader
    from training.plan import BatchOptions, plan_epoch

    t0, busy0, cpu0 = time.perf_counter(), _machine_busy(), _cpu_seconds()
    plan = plan_epoch(m, seed=cfg.seed, epoch=0, workers=cfg.workers,
                      opts=BatchOptions(max_frames=cfg.max_frames, max_utts=cfg.max_utts))
    crcs: list[int] = []
    rows: list[np.ndarray] = []
    spent = [0.0]
    it = iter(make_loader(m, plan, source=source))      # workers start here, as for bench_loader's "ours"
    res = _drain(_recorded(it, crcs, rows, spent), cfg)
    del it                                              # shuts the workers down (and reaps them)
    gc.collect()
    wall = time.perf_counter() - t0
    other = max(_machine_busy() - busy0 - (_cpu_seconds() - cpu0), 0.0) / wall
    res.update(crc32=crcs, rows_digest=rows_digest(rows), check_s=spent[0], wall_s=wall,
               other_cpus=round(other, 2), planned_batches=len(plan.sequence()))
    if source is not None and source.counters is not None:
        res["counters"] = source.totals()
    return res


def _rounds(local: mf.Manifest, m: mf.Manifest, cfg: LoaderBenchConfig, cache_root: str,
            rounds: int) -> dict[str, list[dict]]:
    """Every pass, `rounds` times in turn (each round's cache a new empty folder, removed after it)."""
    from pipeline.remote import FetchPolicy
    from training.data import ShardSource

    policy = FetchPolicy()
    runs: dict[str, list[dict]] = {name: [] for name in PASSES}
    for r in range(rounds):
        runs["local"].append(_pass(local, cfg, None))
        runs["http"].append(_pass(m, cfg, ShardSource.create(policy, cfg.workers)))
        cached = replace(policy, cache=os.path.join(cache_root, f"round{r}"))
        runs["http_cache_cold"].append(_pass(m, cfg, ShardSource.create(cached, cfg.workers)))
        runs["http_cache_warm"].append(_pass(m, cfg, ShardSource.create(cached, cfg.workers)))
        shutil.rmtree(cached.cache, ignore_errors=True)
    return runs


def _summarise(runs: dict[str, list[dict]]) -> dict:
    """Per pass its fastest round (with every round's frames/s), and whether every round of it
    delivered the first local round's batches."""
    ref = runs["local"][0]["crc32"]
    out = {}
    for name, tries in runs.items():
        compared, same = [], True
        for t in tries:
            crcs = t.pop("crc32")
            n = min(len(ref), len(crcs))
            compared.append(n)
            same = same and n > 0 and crcs[:n] == ref[:n]
            t["digest"] = hashlib.sha256(np.array(crcs, dtype=np.uint32).tobytes()).hexdigest()
        best = max(tries, key=lambda t: t["frames_per_s"])
        out[name] = {**best, "rounds": len(tries), "frames_per_s_rounds": [t["frames_per_s"] for t in tries],
                     "other_cpus_rounds": [t["other_cpus"] for t in tries],
                     "compared_batches": min(compared), "same_batches": same}
    return out


def child_main(spec: dict) -> None:
    from pipeline.remote import FetchPolicy

    cfg = LoaderBenchConfig(**spec["config"])
    local = mf.load(Path(spec["shards"]), cfg.split)
    warmup = _pass(local, cfg, None)        # untimed: every pass then finds these shards in the page cache
    m = mf.load(spec["url"], cfg.split, FetchPolicy())
    if m.fingerprint != local.fingerprint or m.num_utterances != local.num_utterances:
        raise RuntimeError(f"the manifest at {spec['url']} is not the one in {spec['shards']}")
    passes = _summarise(_rounds(local, m, cfg, spec["cache"], spec["rounds"]))
    passes["local"]["warmup_frames_per_s"] = warmup["frames_per_s"]
    emit({"event": "result", "result": passes})


# ----------------------------------------------------------------------------------- parent side

def _config(shards: Path, config, quick: bool, overrides: dict) -> LoaderBenchConfig:
    """bench_loader's config: as given (a LoaderBenchConfig, or the ``config`` object of a
    bench_loader result), else its defaults / quick preset with the same frame-budget rule."""
    if config is None:
        cfg = replace(replace(LoaderBenchConfig(), **(QUICK if quick else {})), **overrides)
        if quick:       # as bench_loader.run: the tiny budget must still hold the longest utterance
            m = mf.load(shards, cfg.split)
            cfg = replace(cfg, max_frames=max(cfg.max_frames, int(m.frames.max())))
        return cfg
    if not isinstance(config, LoaderBenchConfig):
        names = {f.name for f in fields(LoaderBenchConfig)}
        config = LoaderBenchConfig(**{k: v for k, v in config.items() if k in names})
    return replace(config, **overrides)


def _child(spec: dict, cfg: LoaderBenchConfig) -> dict:
    limit = (len(PASSES) * spec["rounds"] + 1) * (cfg.seconds + 120) + 120      # only catches a hang
    child = run_child([sys.executable, "-m", "bench.bench_remote", "--child", json.dumps(spec)],
                      env={"OMP_WAIT_POLICY": cfg.omp_wait_policy} if cfg.omp_wait_policy else None, timeout=limit)
    res = child.result()
    if res is None:
        raise RuntimeError(f"remote loader benchmark process failed (exit {child.returncode}):\n"
                           f"{child.stderr[-4000:]}")
    return res


def run(shards: str | Path, config=None, *, quick: bool = False, rounds: int | None = None,
        cache_root: str | Path | None = None, log=print, **overrides) -> dict:
    """Local disk vs HTTP (127.0.0.1) vs HTTP + cache for ours' loader on one shards folder.

    ``config``: a LoaderBenchConfig or the ``config`` of a bench_loader.run result (the same plan,
    workers and cap); ``overrides`` set its fields. ``rounds`` (default 3; quick: 1): every pass
    that many times in turn, the fastest round reported. The caches are folders in a temporary
    folder under ``cache_root`` (default: the system's), removed at the end."""
    shards = Path(shards)
    cfg = _config(shards, config, quick, overrides)
    rounds = rounds or (1 if quick else ROUNDS)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="phonerec-bench-cache-", dir=cache_root) as cache, \
            httpserve.serve(shards) as srv:
        log(f"== loader over HTTP: {srv.url} serving {shards}")
        spec = {"shards": str(shards), "url": srv.url, "cache": cache, "rounds": rounds, "config": asdict(cfg)}
        passes = _child(spec, cfg)
        requests = srv.requests
    out = {"url": srv.url, "server": SERVER, "shards_dir": str(shards), "wall_s": time.time() - t0,
           "config": {**{k: getattr(cfg, k) for k in ("split", "workers", "batches", "seconds", "max_frames",
                                                      "max_utts", "seed")}, "rounds": rounds},
           "passes": passes, "requests": {f"{m} {c}": n for (m, c), n in sorted(requests.items(), key=str)}}
    base = passes["local"]["frames_per_s"]
    for name in PASSES:
        p = passes[name]
        out[f"loader_frames_per_s_{name}"] = p["frames_per_s"]
        out[f"loader_utts_per_s_{name}"] = p["utts_per_s"]
        if name != "local":
            out[f"{name}_over_local"] = p["frames_per_s"] / base if base else None
    out["same_batches"] = all(passes[n]["same_batches"] for n in PASSES)
    log("  " + ", ".join(f"{n} {passes[n]['frames_per_s']:,.0f} frames/s" + (
        f" ({out[f'{n}_over_local']:.2f}x)" if n != "local" else "") for n in PASSES)
        + f"; batches identical: {out['same_batches']}")
    return out


# ---------------------------------------------------------------------------------------- output

def markdown(res: dict) -> str:
    """The table of bench.md's "Loader over HTTP" section."""
    lines = ["| shards read from | frames/s | ÷ local disk | batches | shards fetched | cache hits "
             "| other jobs (cores) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in PASSES:
        p = res["passes"][name]
        c = p.get("counters") or {}
        r = 1.0 if name == "local" else res.get(f"{name}_over_local")
        ratio = "–" if r is None else f"{r:.2f}"
        lines.append(f"| {LABELS[name]} | {p['frames_per_s']:,.0f} | {ratio} | {p['batches']} | "
                     f"{c.get('fetched', '–')} | {c.get('cache_hits', '–')} | {p['other_cpus']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_remote", description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--shards", type=Path, help="shards folder (served over HTTP on 127.0.0.1)")
    ap.add_argument("--split", default="train-clean-100")
    ap.add_argument("--quick", action="store_true", help="a few small batches (smoke test)")
    ap.add_argument("--batches", type=int, help="batches per pass (default 500)")
    ap.add_argument("--seconds", type=float, help="time limit per pass (default 60)")
    ap.add_argument("--rounds", type=int, help=f"every pass this many times, the fastest counts (default {ROUNDS})")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_remote.json")
    a = ap.parse_args(argv)
    if a.child:
        child_main(json.loads(a.child))
        return
    if a.shards is None:
        ap.error("--shards is required")
    over = {k: v for k, v in (("batches", a.batches), ("seconds", a.seconds)) if v is not None}
    res = run(a.shards, quick=a.quick, rounds=a.rounds, split=a.split, **over)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
