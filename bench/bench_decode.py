"""Decoding speed and quality: the torch prefix beam search (decoding/search.py) against
fast-ctc-decode (the baseline: a Rust prefix beam search, called directly), a numpy prefix beam
search written here as an unpruned reference (``reference_beam_search``) and greedy, on the same
inputs in one run.

Usage (from the repository root):
  python -m bench.bench_decode [--quick] [--out results/bench_decode.json] [--no-reference]
                               [--model SHARDS WEIGHTS]

1. Two families of random posteriors ``[32, 1500, 43]``: ``peaked`` (``peaked_log_probs``, a
   trained model's shape) and ``confusable`` (``confusable_log_probs``: an early model's, blank far
   from certain and a close runner-up on a third of the frames); widths 1/10/50/100, 1 and 2 CPU
   threads: utterances/s of what predict runs (``CTCBeamDecoder.best``: the search and the exact
   re-ranking of its first rows), the ratio to fast-ctc-decode at the same width and threads,
   top-beam agreement, and the exact CTC log-likelihood of each top beam against greedy's and
   fast-ctc-decode's (``ctc_log_likelihood``: the one yardstick, whatever a search scores itself).
   With a phone 4-gram LM (estimated on the peaked family's greedy strings): utterances/s on both
   families at widths 10 and 50, one thread. On a machine with CUDA, the torch search also at batch
   64 and 256 on the GPU.
2. ``--model SHARDS WEIGHTS``: real model output, a trained checkpoint's log-probs of the dev split:
   PER of greedy, beam 10/50 without and with a phone 4-gram LM (estimated on the training split;
   weights chosen on a small grid), with utterances/s of the search alone.

Each timed decoder is run once before it is timed (the search compiles its loop with TorchScript
once per process); times are the best of ``repeats`` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from pipeline.vocab import NUM_CLASSES
from decoding import BLANK_SKIP, CTCBeamDecoder, ctc_log_likelihood, default_labels, greedy_decode
from decoding.lm import dense, estimate


def peaked_log_probs(batch: int, frames: int, classes: int, seed: int,
                     noise: float = 1.5, peak: float = 4.0) -> torch.Tensor:
    """Spiky CTC-like posteriors: label runs of 1-3 frames separated by 0-4 blank frames.

    Gaussian logit noise makes the argmax wrong often enough that beam search has work to do.
    """
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, frames, classes, generator=g) * noise
    target = torch.zeros(batch, frames, dtype=torch.long)
    for b in range(batch):
        t = int(torch.randint(0, 4, (1,), generator=g))
        while t < frames:
            run = int(torch.randint(1, 4, (1,), generator=g))
            target[b, t:t + run] = int(torch.randint(1, classes, (1,), generator=g))
            t += run + int(torch.randint(0, 5, (1,), generator=g))
    logits.scatter_add_(-1, target[..., None], torch.full((batch, frames, 1), float(peak)))
    return logits.log_softmax(-1)


def confusable_log_probs(batch: int, frames: int, classes: int, seed: int, share: float = 1 / 3,
                         margin: float = 0.3) -> torch.Tensor:
    """An early-training model's posteriors: the peaked family's label runs with a low peak (the
    blank far from certain), and on ``share`` of the frames a runner-up class within ``margin``
    logits of the top one."""
    lp = peaked_log_probs(batch, frames, classes, seed, noise=0.5, peak=3.0)
    g = torch.Generator().manual_seed(seed + 1)
    top = lp.argmax(-1, keepdim=True)
    rival = (top + torch.randint(1, classes, top.shape, generator=g)) % classes
    pick = torch.rand(top.shape, generator=g) < share
    cur = lp.gather(-1, rival)
    return lp.scatter(-1, rival, torch.where(pick, torch.maximum(lp.gather(-1, top) - margin, cur), cur)).log_softmax(-1)


FAMILIES = {"peaked": peaked_log_probs, "confusable": confusable_log_probs}
# fast-ctc-decode extends every class whose probability is not below its threshold, zeros included;
# the smallest normal float32 makes it consider every class (as cutoff_top_n = all classes does ours)
_MIN_CUT = float(np.finfo(np.float32).tiny)


def fast_ctc_decode_top(log_probs: torch.Tensor, lengths: torch.Tensor, width: int, threads: int) -> list[list[int]]:
    """The baseline: fast-ctc-decode's top hypothesis per utterance (one call per utterance over
    ``threads`` threads; class c rendered as chr(0x100 + c), which maps back exactly)."""
    import fast_ctc_decode
    from concurrent.futures import ThreadPoolExecutor
    arr = np.ascontiguousarray(log_probs.exp().numpy(), dtype=np.float32)
    alphabet = [chr(0x100 + c) for c in range(arr.shape[2])]
    lens = lengths.tolist()

    def one(i: int) -> list[int]:
        seq, _ = fast_ctc_decode.beam_search(arr[i, : lens[i]], alphabet, width, _MIN_CUT)
        return [ord(ch) - 0x100 for ch in seq]

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(lens)))) as pool:
        return list(pool.map(one, range(len(lens))))


def reference_beam_search(log_probs: np.ndarray, beam_width: int, blank: int = 0) -> list[int]:
    """Textbook forward prefix beam search (Graves 2006 / Hannun 2014), float64, no pruning.

    Exact bookkeeping (every prefix's blank / non-blank mass, merging of an extension into an
    existing beam), vectorised over beam x classes per frame; prefixes live in a trie.
    """
    frames, classes = log_probs.shape
    neg = -np.inf
    parent, last_of = [-1], [blank]  # trie: node -> parent node, node -> last label
    children: dict[tuple[int, int], int] = {}
    nodes = np.array([0])
    lb = np.array([0.0])  # log P(prefix, path ends in blank)
    lnb = np.array([neg])  # log P(prefix, path ends in a label)
    for t in range(frames):
        lp = log_probs[t]
        last = np.array([last_of[n] for n in nodes])
        tot = np.logaddexp(lb, lnb)
        stay_b = tot + lp[blank]
        stay_nb = np.where(last != blank, lnb + lp[last], neg)
        ext = tot[:, None] + lp[None, :]
        rep = last != blank
        rows = np.nonzero(rep)[0]
        ext[rows, last[rows]] = lb[rows] + lp[last[rows]]  # repeat needs a blank in between
        ext[:, blank] = neg
        # an extension that is itself a current beam merges into that beam
        index = {int(n): k for k, n in enumerate(nodes)}
        for j, n in enumerate(nodes):
            p = parent[n]
            if p >= 0 and p in index:
                k = index[p]
                c = last_of[n]
                stay_nb[j] = np.logaddexp(stay_nb[j], ext[k, c])
                ext[k, c] = neg
        stay_tot = np.logaddexp(stay_b, stay_nb)
        scores = np.concatenate([stay_tot, ext.ravel()])
        n_beam = len(nodes)
        if scores.size > beam_width:
            top = np.argpartition(-scores, beam_width - 1)[:beam_width]
        else:
            top = np.arange(scores.size)
        top = top[scores[top] > neg]
        new_nodes, new_lb, new_lnb = [], [], []
        for s in top:
            if s < n_beam:
                new_nodes.append(nodes[s])
                new_lb.append(stay_b[s])
                new_lnb.append(stay_nb[s])
            else:
                k, c = divmod(int(s - n_beam), classes)
                key = (int(nodes[k]), c)
                child = children.get(key)
                if child is None:
                    child = len(parent)
                    children[key] = child
                    parent.append(int(nodes[k]))
                    last_of.append(c)
                new_nodes.append(child)
                new_lb.append(neg)
                new_lnb.append(ext[k, c])
        nodes, lb, lnb = np.array(new_nodes), np.array(new_lb), np.array(new_lnb)
    best = int(nodes[np.argmax(np.logaddexp(lb, lnb))])
    out = []
    while best > 0:
        out.append(last_of[best])
        best = parent[best]
    return out[::-1]


def _timed(fn, repeats: int = 1):
    """Best wall time and the CPU time (this process, all threads) of that same run.

    CPU time is the contention-proof number on a shared machine: wall time for threads=2 only
    means something when two cores are actually free.
    """
    best, best_cpu, result = float("inf"), float("nan"), None
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best:
            best, best_cpu = wall, cpu
    return (best, best_cpu), result


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads for the duration (the search's big per-batch tensor work uses them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _top(res, out_lens) -> list[list[int]]:
    return [res[i, 0, : int(out_lens[i, 0])].tolist() for i in range(res.shape[0])]


def _decoder(width: int, threads: int, classes: int, lm=None, alpha: float = 0.0, beta: float = 0.0,
             labels=None) -> CTCBeamDecoder:
    return CTCBeamDecoder(labels=labels, beam_width=width, num_processes=threads, cutoff_top_n=classes,
                          log_probs_input=True, lm=lm, alpha=alpha, beta=beta)


def _decode(dec: CTCBeamDecoder, log_probs, lengths) -> list[list[int]]:
    """What predict keeps: the search and the exact re-ranking of its first rows (``best``)."""
    return dec.best(log_probs, lengths)


def _search_top(dec: CTCBeamDecoder, log_probs, lengths) -> list[list[int]]:
    """The search's own top beams, before the exact re-ranking (what the reference search computes)."""
    r = dec.search(log_probs, lengths, timesteps=False)
    return [t[:k] for t, k in zip(r.tokens[:, 0].tolist(), r.lengths[:, 0].tolist())]


def _reference(log_probs, lengths, width):
    arr, lens = log_probs.double().numpy(), lengths.tolist()
    return [reference_beam_search(arr[i, : lens[i]], width) for i in range(len(lens))]


def _agree(a, b) -> float:
    return 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def _quality(ll: torch.Tensor, ll_greedy: torch.Tensor, ll_fast: torch.Tensor | None) -> dict:
    """The exact log-likelihood of a decoder's top beams against greedy's and fast-ctc-decode's."""
    diff = ll - ll_greedy
    out = {"ll_vs_greedy_mean": round(float(diff.mean()), 4), "ll_vs_greedy_min": round(float(diff.min()), 4),
           "worse_than_greedy": int((diff < -1e-4).sum())}
    if ll_fast is not None:
        out["ge_fast_pct"] = round(100.0 * float((ll >= ll_fast - 1e-4).double().mean()), 1)
    return out


def run(quick: bool = False, reference: bool = True, log=print, repeats: int | None = None) -> dict:
    """Run part 1 on both families; returns the JSON-able result dict (rows + config + targets)."""
    batch, frames = (8, 300) if quick else (32, 1500)
    classes = NUM_CLASSES          # the model's output classes (pipeline.vocab.VOCAB: 43)
    widths = [1, 10] if quick else [1, 10, 50, 100]
    thread_counts = [1, 2]
    repeats = repeats or (3 if quick else 2)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    inputs = {name: make(batch, frames, classes, seed=1234) for name, make in FAMILIES.items()}
    load_start = os.getloadavg()[0]
    rows: list[dict] = []
    for name, log_probs in inputs.items():
        log(f"  == {name} posteriors")
        rows += _family_rows(name, log_probs, lengths, widths, thread_counts, reference, repeats, log)
    rows += _lm_rows(inputs, lengths, [10] if quick else [10, 50], repeats, log)
    rows += gpu_rows(quick, log)
    return {
        "config": {
            "batch": batch, "frames": frames, "classes": classes, "widths": widths,
            "threads": thread_counts, "quick": quick, "seed": 1234,
            "input": "peaked_log_probs(noise=1.5, peak=4.0) and confusable_log_probs (a third of the frames with "
                     "a runner-up within 0.3 logits), all lengths = frames",
            "timing": f"wall clock, best of {repeats} (the numpy reference: one run), after one warm-up run",
            "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "loadavg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(), "torch": torch.__version__,
        },
        "rows": rows,
        "targets": targets(rows),
        "notes": ["numpy reference: float64 prefix beam search without pruning, one thread (GIL-bound)",
                  "torch (ours): CTCBeamDecoder.best, what predict runs: the search (blank_skip 0.999: no frame "
                  "of these inputs reaches it; cutoff_top_n = all classes, as for fast-ctc-decode) and the exact "
                  "re-ranking of its first rows and greedy's hypothesis (rerank_ms_per_utt)",
                  "+ LM: a phone 4-gram estimated on the peaked family's greedy strings, alpha 0.5, beta 1"],
    }


def _family_rows(family: str, log_probs, lengths, widths, thread_counts, reference: bool, repeats: int,
                 log) -> list[dict]:
    """greedy, then per width: fast-ctc-decode and ours per thread count, and the numpy reference."""
    batch, classes = log_probs.shape[0], log_probs.shape[2]
    exact = lambda hyps: ctc_log_likelihood(log_probs, lengths, hyps)   # noqa: E731
    rows: list[dict] = []

    def add(decoder, width, threads, times, **extra):
        seconds, cpu = times
        rows.append({"family": family, "decoder": decoder, "beam_width": width, "threads": threads,
                     "seconds": round(seconds, 4), "utt_per_s": round(batch / seconds, 2),
                     "utt_per_cpu_s": round(batch / cpu, 2) if cpu > 0 else None, **extra})
        log(f"  {decoder:<16} W={width!s:<4} threads={threads}  {batch / seconds:9.2f} utt/s")

    with torch_threads(1):
        sec, greedy = _timed(lambda: greedy_decode(log_probs, lengths), repeats)
    ll_greedy = exact(greedy)
    add("greedy", "-", 1, sec, ll_vs_greedy_mean=0.0)
    for w in widths:
        ref = _reference(log_probs, lengths, w) if reference else None
        for th in thread_counts:
            with torch_threads(th):
                ours_dec = _decoder(w, th, classes)
                _decode(ours_dec, log_probs[:2], lengths[:2])               # compile / warm up once
                t_fast, fast = _timed(lambda: fast_ctc_decode_top(log_probs, lengths, w, th), repeats)
                t_ours, ours = _timed(lambda: _decode(ours_dec, log_probs, lengths), repeats)
                t_search, searched = _timed(lambda: _search_top(ours_dec, log_probs, lengths), repeats)
            ll_fast, ll_ours = exact(fast), exact(ours)
            add("fast-ctc-decode", w, th, t_fast, agree_ref_pct=None if ref is None else round(_agree(fast, ref), 1),
                **_quality(ll_fast, ll_greedy, None))
            # the search alone must equal the reference; best() re-ranks it exactly (never below greedy)
            add("torch (ours)", w, th, t_ours, x_fast=round(t_fast[0] / t_ours[0], 2),
                x_fast_search=round(t_fast[0] / t_search[0], 2),
                agree_fast_pct=round(_agree(ours, fast), 1),
                agree_ref_pct=None if ref is None else round(_agree(searched, ref), 1),
                rerank_ms_per_utt=round(1000 * max(t_ours[0] - t_search[0], 0.0) / batch, 3),
                **_quality(ll_ours, ll_greedy, ll_fast))
        if ref is not None:
            t_ref, _ = _timed(lambda: _reference(log_probs, lengths, w))
            add("numpy reference", w, 1, t_ref, **_quality(exact(ref), ll_greedy, None))
    return rows


def _lm_rows(inputs: dict, lengths, widths, repeats: int, log) -> list[dict]:
    """Our search with a phone 4-gram LM (every class is a candidate then), one thread."""
    classes = next(iter(inputs.values())).shape[2]
    labels = default_labels(classes)
    strings = [[labels[c] for c in h] for h in greedy_decode(inputs["peaked"], lengths)]
    lm = dense(estimate(strings, 4, labels[1:]), labels)
    rows = []
    for family, log_probs in inputs.items():
        for w in widths:
            with torch_threads(1):
                dec = _decoder(w, 1, classes, lm=lm, alpha=0.5, beta=1.0, labels=labels)
                _decode(dec, log_probs[:2], lengths[:2])
                (sec, _), _ = _timed(lambda: _decode(dec, log_probs, lengths), repeats)
            rows.append({"family": family, "decoder": "torch (ours) + 4-gram LM", "beam_width": w, "threads": 1,
                         "seconds": round(sec, 4), "utt_per_s": round(len(lengths) / sec, 2)})
            log(f"  + LM {family:<11} W={w:<4} threads=1  {len(lengths) / sec:9.2f} utt/s")
    return rows


def cpu_model() -> str:
    """The CPU's model name (lscpu's), with the vector extensions that matter to torch's kernels."""
    from bench.report import lscpu_model
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{lscpu_model()} ({', '.join(ext) or 'no AVX2'})"


TARGET_X_FAST = 3.0


def targets(rows: list[dict]) -> list[dict]:
    """The targets at widths 10 and 50, one thread, on both families: >= 3x fast-ctc-decode's
    utterances/s, a top beam at least as likely as fast-ctc-decode's on >= 98 % of utterances and
    never less likely than greedy's."""
    out = []
    for r in rows:
        if r["decoder"] != "torch (ours)" or r["beam_width"] not in (10, 50) or r["threads"] != 1:
            continue
        checks = {f"search alone >= {TARGET_X_FAST:g}x": r["x_fast_search"] >= TARGET_X_FAST,
                  f"with the exact re-ranking >= {TARGET_X_FAST:g}x": r["x_fast"] >= TARGET_X_FAST,
                  "ge_fast_pct >= 98": r["ge_fast_pct"] >= 98.0, "worse_than_greedy == 0": r["worse_than_greedy"] == 0}
        out.append({"family": r.get("family", "peaked"), "beam_width": r["beam_width"], "threads": r["threads"],
                    "x_fast": r["x_fast"], "x_fast_search": r["x_fast_search"],
                    "ge_fast_pct": r["ge_fast_pct"], "worse_than_greedy": r["worse_than_greedy"],
                    "met": all(checks.values()), "missed": [k for k, ok in checks.items() if not ok]})
    return out


def gpu_rows(quick: bool, log=print) -> list[dict]:
    """The torch search on CUDA at batch 64 and 256 (none without a GPU)."""
    if quick or not torch.cuda.is_available():
        return []
    rows = []
    for batch in (64, 256):
        lp = peaked_log_probs(batch, 1500, NUM_CLASSES, seed=1234).cuda()
        lens = torch.full((batch,), 1500, dtype=torch.long)
        for w in (10, 50, 100):
            dec = _decoder(w, 1, NUM_CLASSES)
            _decode(dec, lp, lens)
            torch.cuda.synchronize()
            (sec, _), _ = _timed(lambda: (_decode(dec, lp, lens), torch.cuda.synchronize()), 2)
            rows.append({"decoder": f"torch (ours), {torch.cuda.get_device_name()}", "beam_width": w,
                         "threads": "-", "batch": batch, "seconds": round(sec, 4),
                         "utt_per_s": round(batch / sec, 2), "utt_per_cpu_s": None})
            log(f"  torch on CUDA     W={w:<4} batch={batch}  {batch / sec:9.2f} utt/s")
    return rows


def _search_ratio(r: dict) -> str:
    return f" ({r['x_fast_search']:.2f})" if r.get("x_fast_search") is not None else ""


def markdown(result: dict) -> str:
    def f(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)
    lines = ["| posteriors | decoder | beam | threads | utt/s | x fast-ctc-decode (the search alone) "
             "| top beam = fast-ctc-decode % | = numpy reference % | log-lik vs greedy (mean / min) "
             "| >= fast-ctc-decode % | worse than greedy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r.get('family', 'peaked')} | {r['decoder']} | {r['beam_width']} | {r.get('batch', r['threads'])} "
                     f"| {r['utt_per_s']:.2f} "
                     f"| {f(r.get('x_fast'), '{:.2f}')}{_search_ratio(r)} | {f(r.get('agree_fast_pct'))} "
                     f"| {f(r.get('agree_ref_pct'))} "
                     f"| {f(r.get('ll_vs_greedy_mean'), '{:+.3f}')} / {f(r.get('ll_vs_greedy_min'), '{:+.3f}')} "
                     f"| {f(r.get('ge_fast_pct'))} | {f(r.get('worse_than_greedy'), '{}')} |")
    lines += [""] if result.get("targets") else []
    for t in result.get("targets", []):
        verdict = "met" if t["met"] else "missed: " + ", ".join(t["missed"])
        lines.append(f"- target, {t['family']}, beam {t['beam_width']}, {t['threads']} thread: the search "
                     f"{t['x_fast_search']:.2f}x, with the exact re-ranking {t['x_fast']:.2f}x fast-ctc-decode, "
                     f"{t['ge_fast_pct']:.1f} % >= its log-likelihood, {t['worse_than_greedy']} worse than greedy: "
                     f"{verdict}")
    return "\n".join(lines)
def model_log_probs(shards, weights, split: str = "dev-clean"):
    """A checkpoint's restricted log-probs of a labelled split, batch by batch, on the CPU:
    [(log_probs [B, T, C], lengths [B], references)], and the manifest."""
    from decoding import restrict_to_labels
    from pipeline import manifest as mf
    from training.data import make_loader
    from training.loading import check_compatible, load_model
    from training.plan import BatchOptions, plan_epoch

    loaded = load_model(weights, torch.device("cpu"))
    m = mf.load(shards, split)
    check_compatible(loaded, m)
    plan = plan_epoch(m, seed=0, epoch=0, rank=0, world=1, workers=0, shuffle=False, balance=False,
                      opts=BatchOptions(max_frames=max(20000, int(m.frames.max(initial=1)))))
    out = []
    with torch.no_grad():
        for batch in make_loader(m, plan):
            lp, lens = loaded.model(batch.feats.float(), batch.lengths)
            refs = [batch.labels[i, : int(batch.label_lengths[i])].tolist() for i in range(len(lens))]
            out.append((restrict_to_labels(lp.float(), m.inventory), lens, refs))
    return out, m


def model_rows(shards, weights, split: str = "dev-clean", train: str = "train-clean-100", widths=(10, 50),
               order: int = 4, log=print) -> dict:
    """Part 2: PER and search speed on real model output, without and with a phone LM."""
    import tempfile

    import Levenshtein

    from decoding import load_lm
    from training.tuning import ALPHAS, BETAS, grid_pairs
    from training.phone_lm import build_lm

    batches, m = model_log_probs(shards, weights, split)
    inv, utts = m.inventory, sum(len(b[2]) for b in batches)
    phones = sum(len(r) for b in batches for r in b[2])
    with tempfile.TemporaryDirectory() as tmp:
        info = build_lm(shards, train, order, f"{tmp}/lm.arpa", progress=False)
        lm = load_lm(info["path"], inv.symbols)

    def per(decode) -> tuple[float, float]:
        dist, seconds = 0, 0.0
        with torch_threads(1):
            for lp, lens, refs in batches:
                t0 = time.perf_counter()
                hyps = decode(lp, lens)
                seconds += time.perf_counter() - t0
                dist += sum(Levenshtein.distance(inv.to_codes(h), inv.to_codes(r)) for h, r in zip(hyps, refs))
        return 100.0 * dist / max(phones, 1), utts / seconds

    def beam(width, alpha=0.0, beta=0.0, with_lm=False, blank_skip=BLANK_SKIP):
        dec = CTCBeamDecoder(labels=inv.symbols, beam_width=width, num_processes=1, cutoff_top_n=len(inv.symbols),
                             log_probs_input=True, lm=lm if with_lm else None, alpha=alpha, beta=beta,
                             blank_skip=blank_skip)
        _decode(dec, batches[0][0][:1], batches[0][1][:1])                   # warm up
        return lambda lp, lens: _decode(dec, lp, lens)

    rows = []

    def add(name, width, res, **extra):
        rows.append({"decoder": name, "beam_width": width, "per": round(res[0], 2), "utt_per_s": round(res[1], 1),
                     **extra})
        log(f"  {name:<28} W={width!s:<4} PER {res[0]:6.2f} %  {res[1]:9.1f} utt/s")

    add("greedy", "-", per(lambda lp, lens: greedy_decode(lp, lens)))
    for w in widths:
        add("fast-ctc-decode", w, per(lambda lp, lens: fast_ctc_decode_top(lp, lens, w, 1)))
        add("torch (ours), every frame searched", w, per(beam(w, blank_skip=2.0)))
        add("torch (ours)", w, per(beam(w)))
        grid = {pair: per(beam(w, alpha=pair[0], beta=pair[1], with_lm=True)) for pair in grid_pairs(ALPHAS, BETAS)}
        best = min(grid, key=lambda k: (grid[k][0], k))
        add(f"torch (ours) + {order}-gram LM", w, grid[best], alpha=best[0], beta=best[1],
            grid=[{"alpha": a, "beta": b, "per": round(v[0], 2)} for (a, b), v in grid.items()])
    valid = [(torch.arange(lp.shape[1])[None] < lens[:, None]) for lp, lens, _ in batches]
    skipped = sum(int(((lp[..., 0] >= math.log(BLANK_SKIP)) & v).sum()) for (lp, _, _), v in zip(batches, valid))
    return {"config": {"shards": str(shards), "weights": str(weights), "split": split, "utterances": utts,
                       "phonemes": phones, "lm": {"order": order, "train": train, "ngrams": info["ngrams"]},
                       "skipped_frames_pct": round(100.0 * skipped / max(sum(int(v.sum()) for v in valid), 1), 1),
                       "cpu": cpu_model(), "threads": 1,
                       "note": "LM weights: the best of evaluate's 4 x 4 grid on this same split (optimistic by "
                               "the grid's spread); utt/s counts the search alone, one CPU thread"},
            "rows": rows}


def model_markdown(result: dict) -> str:
    lines = ["| decoder | beam | dev PER % | utt/s (search, 1 thread) | LM weights |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        weights = f"alpha {r['alpha']:g}, beta {r['beta']:g}" if "alpha" in r else "-"
        lines.append(f"| {r['decoder']} | {r['beam_width']} | {r['per']:.2f} | {r['utt_per_s']:.1f} | {weights} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"[8, 300, {NUM_CLASSES}], widths 1 and 10")
    parser.add_argument("--out", type=Path, default=Path("results/bench_decode.json"))
    parser.add_argument("--no-reference", action="store_true", help="skip the numpy reference search")
    parser.add_argument("--model", nargs=2, metavar=("SHARDS", "WEIGHTS"),
                        help="also decode a trained checkpoint's dev split (PER without and with an LM)")
    parser.add_argument("--model-only", action="store_true", help="with --model: skip part 1")
    args = parser.parse_args(argv)
    result = {} if args.model_only else run(quick=args.quick, reference=not args.no_reference)
    if result:
        result["markdown"] = markdown(result)
    if args.model:
        result["model"] = model_rows(*args.model)
        result["model"]["markdown"] = model_markdown(result["model"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    for part in (result, result.get("model") or {}):
        if part.get("markdown"):
            print(part["markdown"], "\n")
    for note in result.get("notes", []):
        print(f"- {note}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
