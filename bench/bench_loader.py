"""Loader and training benchmark: our planned shard loader vs the per-file loaders most people write.

Usage (from the repository root):
  python -m bench.bench_loader --data /tmp/phonerec-bench/corpus-28539 \\
      --shards /tmp/phonerec-bench/shards-28539 [--quick] [--out results/bench_loader.json]

Systems (same corpus, same model, same machine, same run; each in its own fresh subprocess):

- ``ours``: ``training.plan.plan_epoch`` + ``training.data.make_loader`` over the shards (default
  ``BatchOptions``: frame budget 48,000, at most 64 utterances).
- ``baseline_lazy``: a map-style torch ``Dataset`` over the raw per-utterance ``.npy`` files
  (``mfcc/<id>.npy`` + ``transcript/<id>.npy``), ``np.load(path, allow_pickle=False)`` +
  normalization (the shards' statistics) per item; random fixed-size batches (``shuffle=True``),
  ``pad_sequence`` collate, a ``DataLoader`` with the same number of workers. The batch size is
  ours' mean *real* frames per batch divided by the mean utterance length (rounded), so both feed
  the model the same real frames per batch on average.
- ``baseline_memory``: the same Dataset with every utterance loaded and normalized into RAM in
  ``__init__`` (the usual starter code).

Figures per system (keys of its object in the result):

- ``padding_efficiency``: real / padded frames over one whole epoch of that system's batching
  (ours: the epoch plan the trainer runs; baselines: a seeded random permutation cut into batches
  of ``batch_size``); ``padding_efficiency_loaded`` is the same over the batches actually loaded.
- ``max_batch_frames``, ``batch_frames_std``, ``mean_batch_frames``: padded batch size B x Tmax over
  the epoch (``max_batch_frames_loaded``: over the loaded batches).
- ``loader_frames_per_s``, ``loader_utts_per_s`` (2 workers) and ``..._w0`` (in the main process):
  real frames (utterances) per second delivered by the loader alone, no model step, timed from
  creating the DataLoader iterator to the last of ``batches`` batches (or ``seconds``, whichever
  comes first), so worker start-up and the first shard window are included.
- ``loader_frames_per_s_cold`` / ``loader_utts_per_s_cold``: the 2-worker figure again (next epoch's
  order) right after evicting that system's files (shards; raw .npy files) from the page cache
  with ``posix_fadvise(DONTNEED)``; all other figures run with a warm page cache (the corpus was
  just read by preprocessing). Not for the in-memory baseline, which reads no files after setup.
- ``first_batch_s``: wall time from spawning a fresh Python process to its first batch (imports,
  manifest/listing, the in-memory baseline's load-everything phase, worker start-up);
  ``setup_s``: the dataset construction part of it.
- ``peak_rss_mb``: peak memory of the process running the loader plus its DataLoader workers while
  building the dataset and loading (training excluded), sampled from /proc every 0.5 s as the sum
  of PSS (proportional set size: pages shared between the main process and its forked workers
  counted once); ``peak_rss_sum_mb`` sums plain RSS instead (shared pages counted per process),
  ``peak_rss_main_mb`` / ``peak_rss_worker_mb`` are ``ru_maxrss`` of the main process and of its
  largest worker. ``train_peak_rss_mb``: the same PSS sum during training.
- ``train_frames_per_s``: real frames per second of end-to-end CPU training of the ``default`` model
  (same seed, so the same initial weights; ``torch.set_num_threads(2)``; AdamW, CTC, clipping as in
  the trainer; no augmentation) over ``train_steps`` steps after ``warmup_steps`` untimed ones,
  with the loader's 2 workers, ``OMP_WAIT_POLICY=PASSIVE`` (see the config); ``data_wait_fraction``: time blocked on ``next(loader)`` / (that +
  step time) over the timed steps.

The in-memory baseline is skipped (its figures ``None``, with a note) when its estimated footprint
exceeds 60 % of the available memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from bench import ROOT
from bench.harness import emit, run_child
from pipeline import manifest as mf
from pipeline.features import hours
from pipeline.layout import transcript_dir
from pipeline.npyfile import npy_frames
from training.plan import DEFAULT_MAX_FRAMES

SYSTEMS = ("ours", "baseline_lazy", "baseline_memory")
LOADER_PHASES = ("setup", "loader_w2", "loader_w0", "loader_cold")


@dataclass
class LoaderBenchConfig:
    split: str = "train-clean-100"
    workers: int = 2              # DataLoader workers of the "w2" figures and of training
    batches: int = 500            # loader throughput: at most this many batches ...
    seconds: float = 60.0         # ... or this many seconds, per worker setting
    loader_w0: bool = True        # also measure the loader in the main process
    loader_cold: bool = True      # also with the system's files evicted from the page cache first
    train_steps: int = 5          # timed training steps per system (0: no training phase)
    warmup_steps: int = 1         # untimed steps before them
    threads: int = 2              # torch.set_num_threads for training
    preset: str = "default"
    max_frames: int = DEFAULT_MAX_FRAMES    # ours' BatchOptions (defaults); quick mode lowers it
    max_utts: int = 64
    seed: int = 0
    lr: float = 2e-3
    sample_interval: float = 0.5  # /proc memory sampling period (s)
    # OpenMP threads sleep instead of spinning at barriers: on a machine shared with other jobs (or
    # with the DataLoader workers) spinning turned single training steps 10x slower. Same for all
    # systems; "" leaves the environment as it is.
    omp_wait_policy: str = "PASSIVE"


QUICK = dict(batches=12, seconds=10.0, train_steps=1, warmup_steps=0, max_frames=4000, sample_interval=0.1)  # budget >= longest


# --------------------------------------------------------------------------------- the systems (child side)

def _emit(**event) -> None:
    emit(event)


def _phase(name: str) -> None:
    _emit(event="phase", phase=name, t=time.time())


def raw_split_files(data: Path, split: str) -> tuple[list[str], list[Path], list[Path]]:
    """Starter-code style listing: sorted mfcc/*.npy, paired transcripts (transcript/ or transcript/raw/)."""
    mdir = data / split / "mfcc"
    tdir = transcript_dir(data / split) or data / split / "transcript"
    names = sorted(f for f in os.listdir(mdir) if f.endswith(".npy"))
    return [n[:-4] for n in names], [mdir / n for n in names], [tdir / n for n in names]


def make_baseline_dataset(data: Path, split: str, mean: np.ndarray, std: np.ndarray, in_memory: bool):
    import torch
    from torch.utils.data import Dataset

    from pipeline.vocab import SYMBOL_INDEX

    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)

    class RawUtterances(Dataset):
        """What the HW3P2 starter code does: one .npy per utterance, transcripts as symbol arrays."""

        def __init__(self):
            _, self.mfcc, self.transcripts = raw_split_files(data, split)
            self.items = [self.load(i) for i in range(len(self.mfcc))] if in_memory else None

        def __len__(self):
            return len(self.mfcc)

        def load(self, i):
            x = (np.load(self.mfcc[i], allow_pickle=False) - mean32) / std32
            syms = np.load(self.transcripts[i], allow_pickle=False)
            y = np.array([SYMBOL_INDEX[s] for s in syms[1:-1]], dtype=np.int64)
            return x.astype(np.float32, copy=False), y

        def __getitem__(self, i):
            x, y = self.items[i] if self.items is not None else self.load(i)
            return torch.from_numpy(x), torch.from_numpy(y)

    return RawUtterances()


def pad_collate(items):
    import torch
    from torch.nn.utils.rnn import pad_sequence

    xs, ys = zip(*items)
    lengths = torch.tensor([len(x) for x in xs], dtype=torch.int64)
    label_lengths = torch.tensor([len(y) for y in ys], dtype=torch.int64)
    return pad_sequence(xs, batch_first=True), lengths, pad_sequence(ys, batch_first=True), label_lengths


class _System:
    """One loader implementation in the child: a factory of DataLoaders yielding
    (feats, lengths, labels, label_lengths)."""

    def __init__(self, name: str, data: Path, shards: Path, cfg: LoaderBenchConfig, batch_size: int):
        from training.plan import BatchOptions

        self.name, self.cfg, self.batch_size = name, cfg, batch_size
        self.m = mf.load(shards, cfg.split)
        self.opts = BatchOptions(max_frames=cfg.max_frames, max_utts=cfg.max_utts)
        if name != "ours":
            stats = self.m.stats
            self.ds = make_baseline_dataset(data, cfg.split, stats.mean, stats.std,
                                            in_memory=name == "baseline_memory")

    def files(self) -> list[Path]:
        if self.name == "ours":
            return self.m.shard_paths()
        return [*self.ds.mfcc, *self.ds.transcripts]

    def evict(self) -> None:
        """Drop this system's input files from the page cache (only these files: POSIX_FADV_DONTNEED)."""
        for p in self.files():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def loader(self, workers: int, epoch: int = 0):
        import torch
        from torch.utils.data import DataLoader

        from training.data import make_loader
        from training.plan import plan_epoch

        if self.name == "ours":
            plan = plan_epoch(self.m, seed=self.cfg.seed, epoch=epoch, workers=workers, opts=self.opts)
            dl = make_loader(self.m, plan)
            return ((b.feats, b.lengths, b.labels, b.label_lengths) for b in dl)
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)
        kwargs = {"prefetch_factor": 4} if workers else {}
        return iter(DataLoader(self.ds, batch_size=self.batch_size, shuffle=True, generator=g,
                               collate_fn=pad_collate, num_workers=workers, **kwargs))


def _drain(it, cfg: LoaderBenchConfig, on_first=None) -> dict:
    """Pull batches until cfg.batches or cfg.seconds; real/padded frames and rates."""
    t0 = time.perf_counter()
    n = utts = real = padded = 0
    biggest = 0
    for feats, lengths, _labels, _llens in it:
        if n == 0 and on_first is not None:
            on_first()
        b, t = int(lengths.numel()), int(feats.shape[1])
        n += 1
        utts += b
        real += int(lengths.sum())
        padded += b * t
        biggest = max(biggest, b * t)
        if n >= cfg.batches or time.perf_counter() - t0 >= cfg.seconds:
            break
    dt = time.perf_counter() - t0
    return {"batches": n, "utterances": utts, "frames": real, "padded_frames": padded, "seconds": dt,
            "frames_per_s": real / dt, "utts_per_s": utts / dt, "max_batch_frames": biggest}


def _train(system: _System, cfg: LoaderBenchConfig) -> dict:
    import torch
    import torch.nn.functional as F

    from training.model import Model, preset_config

    torch.manual_seed(cfg.seed)
    model = Model(preset_config(cfg.preset))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    it = system.loader(cfg.workers, epoch=0)
    wait = busy = 0.0
    frames = padded = utts = 0
    step_waits, step_rates, losses = [], [], []
    t_ready = time.perf_counter()
    for step in range(cfg.warmup_steps + cfg.train_steps):
        feats, lengths, labels, label_lengths = next(it)
        t_got = time.perf_counter()
        lp, out_lens = model(feats.float(), lengths)
        loss_sum = F.ctc_loss(lp.transpose(0, 1), labels, out_lens, label_lengths, blank=0, reduction="sum",
                              zero_infinity=True)
        loss = loss_sum / max(float(label_lengths.sum()), 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        t_done = time.perf_counter()
        if step >= cfg.warmup_steps:
            wait += t_got - t_ready
            busy += t_done - t_got
            frames += int(lengths.sum())
            padded += int(lengths.numel()) * int(feats.shape[1])
            utts += int(lengths.numel())
            step_waits.append((t_got - t_ready) / max(t_done - t_ready, 1e-9))
            step_rates.append(int(lengths.sum()) / max(t_done - t_ready, 1e-9))
            losses.append(float(loss))
        t_ready = t_done
    del it
    total = wait + busy
    return {"train_frames_per_s": frames / total if total else None,
            "train_padded_frames_per_s": padded / total if total else None,
            "train_utts_per_s": utts / total if total else None,
            "data_wait_fraction": wait / total if total else None,
            "max_step_wait_fraction": max(step_waits) if step_waits else None,
            # robust to bursts of other jobs on a shared machine
            "train_frames_per_s_median_step": float(np.median(step_rates)) if step_rates else None,
            "train_step_s": total / max(cfg.train_steps, 1), "train_steps": cfg.train_steps,
            "warmup_steps": cfg.warmup_steps, "train_frames": frames, "train_loss_per_symbol": losses}


def child_main(spec: dict) -> None:
    import gc

    import torch

    t_imported = time.time()
    cfg = LoaderBenchConfig(**spec["config"])
    _emit(event="imported", t=t_imported)
    _phase("setup")
    t0 = time.perf_counter()
    system = _System(spec["system"], Path(spec["data"]), Path(spec["shards"]), cfg, spec["batch_size"])
    setup_s = time.perf_counter() - t0
    out: dict = {"setup_s": setup_s}

    _phase("loader_w2")
    it = system.loader(cfg.workers)
    out["w2"] = _drain(it, cfg, on_first=lambda: _emit(event="first_batch", t=time.time()))
    del it
    gc.collect()
    if cfg.loader_w0:
        _phase("loader_w0")
        it = system.loader(0)
        out["w0"] = _drain(it, cfg)
        del it
        gc.collect()
    if cfg.loader_cold and system.name != "baseline_memory":
        _phase("loader_cold")
        system.evict()
        it = system.loader(cfg.workers, epoch=1)
        out["cold"] = _drain(it, cfg)
        del it
        gc.collect()
    out["ru_maxrss_main_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["ru_maxrss_worker_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if cfg.train_steps > 0:
        torch.set_num_threads(cfg.threads)
        _phase("train")
        out["train"] = _train(system, cfg)
    _phase("done")
    _emit(event="result", result=out)


# ----------------------------------------------------------------------------- measuring (parent side)

def _ppid_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(sum of PSS, sum of RSS, processes) in MB over pid and all its descendants."""
    kids = _ppid_map()
    todo, pss, rss, n = [pid], 0, 0, 0
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
            n += 1
        except (OSError, ValueError):
            continue
    return pss / 1024, rss / 1024, n


def _machine_busy() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def run_system(system: str, data: Path, shards: Path, cfg: LoaderBenchConfig, batch_size: int,
               log=print) -> dict:
    """One system in a fresh subprocess (bench/harness.py), its process tree's memory sampled per phase."""
    spec = {"system": system, "data": str(data), "shards": str(shards), "config": asdict(cfg),
            "batch_size": batch_size}
    phase, peaks, lock = ["start"], {}, threading.Lock()

    def sample(pid: int) -> None:
        pss, rss, nproc = tree_memory(pid)
        with lock:
            p = peaks.setdefault(phase[0], [0.0, 0.0, 0])
            p[0], p[1], p[2] = max(p[0], pss), max(p[1], rss), max(p[2], nproc)

    def on_event(ev: dict, pid: int) -> None:
        if ev["event"] == "phase":
            sample(pid)                 # every phase gets at least one sample, however short
            with lock:
                phase[0] = ev["phase"]
    busy0, load0 = _machine_busy(), os.getloadavg()[0]
    child = run_child([sys.executable, "-m", "bench.bench_loader", "--child", json.dumps(spec)],
                      env={"OMP_WAIT_POLICY": cfg.omp_wait_policy} if cfg.omp_wait_policy else None,
                      on_event=on_event, tick=sample, every=cfg.sample_interval)
    busy1, load1 = _machine_busy(), os.getloadavg()[0]
    res = child.result()
    if res is None:
        raise RuntimeError(f"{system} benchmark process failed (exit {child.returncode}):\n{child.stderr[-4000:]}")
    out = _system_figures(child, res, peaks)
    out["contention"] = {"loadavg_1min_start_end": [round(load0, 2), round(load1, 2)],   # other jobs on the machine
                         "own_cpus": round(child.cpu_s / child.wall_s, 2),
                         "other_cpus": round(max(busy1 - busy0 - child.cpu_s, 0.0) / child.wall_s, 2)}
    log(f"  {system:<16} first batch {out['first_batch_s']:.1f} s, loader {out['loader_frames_per_s']:,.0f} "
        f"frames/s (w{cfg.workers}), peak {out['peak_rss_mb']:,.0f} MB, {child.wall_s:.0f} s, "
        f"other jobs {out['contention']['other_cpus']:.1f} cores"
        + (f", train {out['train_frames_per_s']:,.0f} frames/s, wait {out['data_wait_fraction']:.2f}"
           if "train" in res else ""))
    return out


def _system_figures(child, res: dict, peaks: dict) -> dict:
    """run_system's row: the child's result, its events' times and the sampled memory peaks."""
    events = {f"phase_{e['phase']}" if e["event"] == "phase" else e["event"]: e.get("t") for e in child.events}
    stamps = sorted((t, k[len("phase_"):]) for k, t in events.items() if k.startswith("phase_"))
    loader_peaks = [peaks[p] for p in LOADER_PHASES if p in peaks] or [[float("nan"), float("nan"), 0]]
    w2 = res["w2"]
    out = {
        "first_batch_s": events["first_batch"] - child.started,
        "first_batch_after_imports_s": events["first_batch"] - events["imported"],
        "setup_s": res["setup_s"], "loader_frames_per_s": w2["frames_per_s"], "loader_utts_per_s": w2["utts_per_s"],
        "loader_batches": w2["batches"], "loader_seconds": w2["seconds"],
        "padding_efficiency_loaded": w2["frames"] / max(w2["padded_frames"], 1),
        "max_batch_frames_loaded": w2["max_batch_frames"],
        "peak_rss_mb": max(p[0] for p in loader_peaks), "peak_rss_sum_mb": max(p[1] for p in loader_peaks),
        "peak_rss_main_mb": res["ru_maxrss_main_mb"], "peak_rss_worker_mb": res["ru_maxrss_worker_mb"],
        "loader_processes": max(p[2] for p in loader_peaks), "wall_s": child.wall_s,
        "phase_seconds": {name: round(b - a, 2) for (a, name), (b, _) in zip(stamps, stamps[1:])},
    }
    for run_name in ("w0", "cold"):
        if run_name in res:
            r = res[run_name]
            out.update({f"loader_frames_per_s_{run_name}": r["frames_per_s"], f"loader_utts_per_s_{run_name}":
                        r["utts_per_s"], f"loader_batches_{run_name}": r["batches"]})
            if run_name == "w0":
                out["loader_seconds_w0"] = r["seconds"]
    if "train" in res:
        out.update(res["train"])
        out["train_peak_rss_mb"] = peaks.get("train", [None])[0]
    return out


# ------------------------------------------------------------------------------ epoch-level batch figures

def batch_figures(batches: list[np.ndarray]) -> dict:
    """Padding and padded-batch-size figures of an epoch given each batch's utterance lengths."""
    real = np.array([int(b.sum()) for b in batches], dtype=np.float64)
    padded = np.array([int(b.max()) * len(b) for b in batches], dtype=np.float64)
    utts = np.array([len(b) for b in batches], dtype=np.float64)
    return {"padding_efficiency": float(real.sum() / padded.sum()),
            "max_batch_frames": int(padded.max()), "batch_frames_std": float(padded.std()),
            "mean_batch_frames": float(padded.mean()), "mean_batch_real_frames": float(real.mean()),
            "mean_batch_utts": float(utts.mean()), "batches_per_epoch": len(batches)}


def ours_epoch(m: mf.Manifest, cfg: LoaderBenchConfig) -> dict:
    from training.plan import BatchOptions, plan_epoch

    plan = plan_epoch(m, seed=cfg.seed, epoch=0, workers=cfg.workers,
                      opts=BatchOptions(max_frames=cfg.max_frames, max_utts=cfg.max_utts))
    figs = batch_figures([m.frames[b] for b in plan.sequence()])
    figs["frame_budget"] = cfg.max_frames
    figs["dropped_utterances"] = plan.dropped_utterances
    return figs


def raw_lengths(data: Path, m: mf.Manifest, split: str) -> np.ndarray:
    """Frames of every raw file the baselines list (from the manifest; headers for any it rejected)."""
    by_id = dict(zip(m.ids, m.frames.tolist()))
    ids, paths, _ = raw_split_files(data, split)
    return np.array([by_id[i] if i in by_id else npy_frames(p) for i, p in zip(ids, paths)], dtype=np.int64)


def baseline_epoch(lengths: np.ndarray, batch_size: int, seed: int) -> dict:
    order = np.random.default_rng(seed).permutation(len(lengths))
    figs = batch_figures([lengths[order[k:k + batch_size]] for k in range(0, len(order), batch_size)])
    figs["batch_size"] = batch_size
    return figs


def meminfo_mb(key: str) -> float | None:
    """A /proc/meminfo figure (``MemTotal``, ``MemAvailable``, ...) in MB; None where it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _mem_available_mb() -> float:
    avail = meminfo_mb("MemAvailable")
    return float("inf") if avail is None else avail


def run(data: str | Path, shards: str | Path, *, quick: bool = False, config: LoaderBenchConfig | None = None,
        systems: tuple[str, ...] = SYSTEMS, log=print, **overrides) -> dict:
    """Benchmark the systems on one corpus; returns the JSON-able result.

    ``overrides`` set LoaderBenchConfig fields (after the quick preset), e.g. train_steps=0 for a
    memory/loader-only run."""
    data, shards = Path(data), Path(shards)
    cfg = config or LoaderBenchConfig()
    if quick:
        cfg = replace(cfg, **QUICK)
    cfg = replace(cfg, **overrides)
    m = mf.load(shards, cfg.split)
    if quick:   # a tiny budget keeps the smoke test fast; it must still hold the longest utterance
        cfg = replace(cfg, max_frames=max(cfg.max_frames, int(m.frames.max())))
    lengths = raw_lengths(data, m, cfg.split)
    ours = ours_epoch(m, cfg)
    batch_size = max(1, round(ours["mean_batch_real_frames"] / float(lengths.mean())))
    base = baseline_epoch(lengths, batch_size, cfg.seed)
    est_memory_mb = float(lengths.sum()) * m.feature_dim * np.dtype(np.float32).itemsize / 2**20   # normalized float32
    log(f"loader benchmark: {m.num_utterances:,} utterances, {m.total_frames:,} frames, {len(m.shards)} shards; "
        f"baseline batch size {batch_size}")
    result: dict = {
        "corpus": {"utterances": m.num_utterances, "frames": m.total_frames, "hours": hours(m.total_frames),
                   "shards": len(m.shards), "raw_files": int(len(lengths)), "split": cfg.split,
                   "data": str(data), "shards_dir": str(shards)},
        "config": {**asdict(cfg), "quick": quick, "baseline_batch_size": batch_size,
                   "baseline_batch_size_rule": "round(ours' mean real frames per batch / mean utterance frames)"},
        "notes": [],
    }
    for name in systems:
        epoch = ours if name == "ours" else base
        if name == "baseline_memory" and est_memory_mb > 0.6 * _mem_available_mb():
            msg = (f"baseline_memory skipped: needs about {est_memory_mb:,.0f} MB of features in RAM, "
                   f"{_mem_available_mb():,.0f} MB available")
            log("  " + msg)
            result["notes"].append(msg)
            result[name] = {**epoch, "skipped": msg}
            continue
        measured = run_system(name, data, shards, cfg, batch_size, log=log)
        result[name] = {**epoch, **measured}
        if name == "baseline_memory":
            result[name]["estimated_feature_mb"] = est_memory_mb
    result["goals"] = goals(result)
    return result


def _get(d: dict, key: str):
    v = d.get(key) if isinstance(d, dict) else None
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def goals(res: dict) -> dict:
    """The issue's targets, checked against the measured figures (None: not measured)."""
    ours, lazy = res.get("ours", {}), res.get("baseline_lazy", {})
    out = {}
    pe = _get(ours, "padding_efficiency")
    out["padding_efficiency_ge_0.97"] = {"value": pe, "met": None if pe is None else pe >= 0.97}
    for suffix in ("", "_w0", "_cold"):
        a, b = _get(ours, "loader_frames_per_s" + suffix), _get(lazy, "loader_frames_per_s" + suffix)
        ratio = a / b if a and b else None
        out[f"loader{suffix}_ge_5x_lazy"] = {"value": ratio, "met": None if ratio is None else ratio >= 5}
    lf, tf, wait = _get(ours, "loader_frames_per_s"), _get(ours, "train_frames_per_s"), _get(ours, "data_wait_fraction")
    out["loader_not_bottleneck"] = {
        "loader_over_train": lf / tf if lf and tf else None, "data_wait_fraction": wait,
        "max_step_wait_fraction": _get(ours, "max_step_wait_fraction"),
        "rule": "loader delivers >= 2x the frames/s training consumes and data-wait fraction <= 0.05",
        "met": None if (lf is None or tf is None or wait is None) else (lf >= 2 * tf and wait <= 0.05)}
    mb, budget = _get(ours, "max_batch_frames"), _get(ours, "frame_budget")
    mbl = _get(ours, "max_batch_frames_loaded")
    out["max_batch_within_budget"] = {"value": mb, "loaded": mbl, "budget": budget,
                                      "met": None if mb is None or budget is None else
                                      (mb <= budget and (mbl is None or mbl <= budget))}
    return out


# ------------------------------------------------------------------------------------------------ output

ROWS = [  # (key, label, format)
    ("padding_efficiency", "padding efficiency (real / padded frames, one epoch)", "{:.3f}"),
    ("padding_efficiency_loaded", "padding efficiency, loaded batches", "{:.3f}"),
    ("loader_frames_per_s", "loader frames/s, 2 workers", "{:,.0f}"),
    ("loader_utts_per_s", "loader utterances/s, 2 workers", "{:,.1f}"),
    ("loader_frames_per_s_w0", "loader frames/s, 0 workers", "{:,.0f}"),
    ("loader_utts_per_s_w0", "loader utterances/s, 0 workers", "{:,.1f}"),
    ("loader_frames_per_s_cold", "loader frames/s, 2 workers, files evicted from page cache", "{:,.0f}"),
    ("train_frames_per_s", "training frames/s (`default` model, CPU; real frames)", "{:,.0f}"),
    ("train_frames_per_s_median_step", "  median over the timed steps", "{:,.0f}"),
    ("data_wait_fraction", "data-wait fraction of a training step", "{:.3f}"),
    ("first_batch_s", "first batch from a fresh process (s)", "{:.1f}"),
    ("setup_s", "  of which dataset setup (s)", "{:.1f}"),
    ("peak_rss_mb", "peak memory, loader + workers (PSS, MB)", "{:,.0f}"),
    ("peak_rss_sum_mb", "peak memory, summed RSS (MB)", "{:,.0f}"),
    ("train_peak_rss_mb", "peak memory while training (PSS, MB)", "{:,.0f}"),
    ("max_batch_frames", "longest padded batch B x Tmax (frames)", "{:,.0f}"),
    ("batch_frames_std", "std of padded batch frames", "{:,.0f}"),
    ("mean_batch_frames", "mean padded batch frames", "{:,.0f}"),
    ("mean_batch_real_frames", "mean real batch frames", "{:,.0f}"),
    ("mean_batch_utts", "mean utterances per batch", "{:.1f}"),
]
LOWER_IS_BETTER = {"data_wait_fraction", "first_batch_s", "setup_s", "peak_rss_mb", "peak_rss_sum_mb",
                   "train_peak_rss_mb", "max_batch_frames", "batch_frames_std"}


def _fmt(fmt: str, v) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def markdown(res: dict) -> str:
    lines = ["| figure | ours | baseline lazy | baseline in-memory | ours ÷ lazy |",
             "|---|---:|---:|---:|---:|"]
    for key, label, fmt in ROWS:
        vals = [res.get(s, {}).get(key) for s in SYSTEMS]
        if all(v is None for v in vals):
            continue
        o, lz = vals[0], vals[1]
        ratio = f"{o / lz:.2f}" if isinstance(o, (int, float)) and isinstance(lz, (int, float)) and lz else "–"
        lines.append(f"| {label} | " + " | ".join(_fmt(fmt, v) for v in vals) + f" | {ratio} |")
    return "\n".join(lines)


def config_arguments(ap: argparse.ArgumentParser, cls) -> None:
    """One flag per field of a bench config dataclass (its declaration is the one place: --batches,
    --train-steps, ...); not given, the field keeps its default (or the --quick preset's)."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default {f.default}")
        else:
            ap.add_argument(flag, type=type(f.default), default=None, help=f"default {f.default!r}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_loader", description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help="raw corpus root (holds <split>/mfcc)")
    ap.add_argument("--shards", type=Path, help="shards folder built from it")
    ap.add_argument("--quick", action="store_true", help="a few batches and one timed step (smoke test)")
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    config_arguments(ap, LoaderBenchConfig)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench_loader.json")
    a = ap.parse_args(argv)
    if a.child:
        child_main(json.loads(a.child))
        return
    if a.data is None or a.shards is None:
        ap.error("--data and --shards are required")
    over = {f.name: getattr(a, f.name) for f in fields(LoaderBenchConfig) if getattr(a, f.name) is not None}
    res = run(a.data, a.shards, quick=a.quick, systems=tuple(a.systems.split(",")), **over)
    res["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    res["command"] = " ".join(["python", "-m", "bench.bench_loader", *(argv if argv is not None else sys.argv[1:])])
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))
    for k, g in res["goals"].items():
        print(f"- {k}: {'met' if g['met'] else 'NOT met' if g['met'] is False else 'not measured'} "
              f"({ {x: y for x, y in g.items() if x != 'met'} })")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
