"""Decoding speed and quality: our CTCBeamDecoder (fast-ctc-decode) vs greedy vs other decoders.

Usage (from the repository root):
  python -m bench.bench_decode [--quick] [--out results/bench_decode.json] [--no-reference]

Other decoders: pyctcdecode when importable (its pip metadata pins numpy<2, so in this venv it was
installed with ``pip install --no-deps pyctcdecode pygtrie``; it runs fine on numpy 2), and a
numpy prefix beam search written here as an unpruned reference (``reference_beam_search``).
Quality is measured with the exact CTC log-likelihood of each top hypothesis, so decoders are
compared on the same yardstick regardless of their internal scores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipeline.vocab import NUM_CLASSES
from training.decode import CTCBeamDecoder, ctc_log_likelihood, greedy_decode

_CHAR_BASE = 0x100  # pyctcdecode labels: class c -> chr(_CHAR_BASE + c), blank -> ""


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


def _ours(log_probs, lengths, width, threads):
    dec = CTCBeamDecoder(labels=None, beam_width=width, num_processes=threads,
                         cutoff_top_n=log_probs.shape[-1], cutoff_prob=1.0,
                         backend="fast_ctc_decode")
    res, _, _, out_lens = dec.decode(log_probs, lengths, compute_scores=False)
    return [res[i, 0, : int(out_lens[i, 0])].tolist() for i in range(res.shape[0])]


def _reference(log_probs, lengths, width, threads):
    arr = log_probs.double().numpy()
    lens = lengths.tolist()

    def one(i):
        return reference_beam_search(arr[i, : lens[i]], width)

    if threads > 1:
        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(len(lens))))
    return [one(i) for i in range(len(lens))]


def _pyctc_decoder(classes: int):
    import logging

    logging.getLogger("pyctcdecode").setLevel(logging.ERROR)  # "no kenlm / no space" warnings
    from pyctcdecode import build_ctcdecoder

    labels = [""] + [chr(_CHAR_BASE + c) for c in range(1, classes)]
    return build_ctcdecoder(labels)


def _pyctc_text_to_ids(text: str) -> list[int]:
    return [ord(ch) - _CHAR_BASE for ch in text if ch != " "]


def _pyctc(decoder, pool, log_probs, lengths, width):
    arrs = [log_probs[i, : int(lengths[i])].numpy() for i in range(log_probs.shape[0])]
    if pool is None:
        beams = [decoder.decode_beams(a, beam_width=width) for a in arrs]
    else:
        beams = decoder.decode_beams_batch(pool, arrs, beam_width=width)
    return [_pyctc_text_to_ids(b[0][0]) for b in beams]


def _agree(a, b) -> float:
    return 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)


def run(quick: bool = False, reference: bool = True, log=print) -> dict:
    """Run the benchmark; returns the JSON-able result dict (rows + config)."""
    batch, frames = (8, 300) if quick else (64, 1500)
    classes = NUM_CLASSES          # the model's output classes (pipeline.vocab.VOCAB: 43)
    widths = [1, 10] if quick else [1, 2, 10, 50]
    thread_counts = [1, 2]
    log_probs = peaked_log_probs(batch, frames, classes, seed=1234)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    repeats = 3 if quick else 1  # fast decoders only; the pure-Python ones run once

    def mean_ll(hyps):
        return float(ctc_log_likelihood(log_probs, lengths, hyps).mean())

    rows: list[dict] = []
    notes: list[str] = []
    load_start = os.getloadavg()[0]

    def add(decoder, width, threads, times, hyps, ours_same_width=None, cpu_valid=True):
        seconds, cpu = times
        rows.append({
            "decoder": decoder, "beam_width": width, "threads": threads,
            "seconds": round(seconds, 4), "utt_per_s": round(batch / seconds, 2),
            # worker processes' CPU is not visible here, hence None for the pyctcdecode pool
            "utt_per_cpu_s": round(batch / cpu, 2) if cpu_valid and cpu > 0 else None,
            "mean_ctc_loglik": round(mean_ll(hyps), 3),
            "agree_greedy_pct": round(_agree(hyps, greedy), 1),
            "agree_ours_pct": None if ours_same_width is None else round(_agree(hyps, ours_same_width), 1),
        })
        log(f"  {decoder:<22} W={width!s:<4} threads={threads}  {batch / seconds:9.2f} utt/s")

    sec, greedy = _timed(lambda: greedy_decode(log_probs, lengths), repeats)
    add("greedy", "-", 1, sec, greedy)

    ours: dict[int, list] = {}
    for w in widths:
        for th in thread_counts:
            sec, hyps = _timed(lambda: _ours(log_probs, lengths, w, th), repeats)
            if w in ours and hyps != ours[w]:
                notes.append(f"fast-ctc-decode W={w}: threads={th} output differs from threads=1")
            ours.setdefault(w, hyps)
            add("fast-ctc-decode (ours)", w, th, sec, hyps, ours[w])

    try:
        decoder = _pyctc_decoder(classes)
        from importlib.metadata import version

        pyctc_version = version("pyctcdecode")
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", reported below
        decoder = None
        notes.append(f"pyctcdecode unavailable ({type(exc).__name__}: {exc}); "
                     "compared against the numpy reference beam search only")
    if decoder is not None:
        notes.append(f"pyctcdecode {pyctc_version}: default pruning (beam_prune_logp=-10, "
                     "token_min_logp=-5), no LM; threads=2 means a 2-process fork Pool "
                     "(decode_beams_batch), since it is pure Python")
        ctx = multiprocessing.get_context("fork")
        for w in widths:
            for th in thread_counts:
                pool = ctx.Pool(th) if th > 1 else None
                try:
                    sec, hyps = _timed(lambda: _pyctc(decoder, pool, log_probs, lengths, w))
                finally:
                    if pool is not None:
                        pool.close()
                        pool.join()
                add("pyctcdecode", w, th, sec, hyps, ours[w], cpu_valid=pool is None)

    if reference or decoder is None:
        notes.append("reference: numpy float64 prefix beam search without pruning "
                     "(threads=2 uses a thread pool; mostly GIL-bound)")
        for w in widths:
            for th in thread_counts:
                sec, hyps = _timed(lambda: _reference(log_probs, lengths, w, th))
                add("numpy reference", w, th, sec, hyps, ours[w])

    return {
        "config": {
            "batch": batch, "frames": frames, "classes": classes, "widths": widths,
            "threads": thread_counts, "quick": quick, "seed": 1234,
            "input": "peaked_log_probs(noise=1.5, peak=4.0), all lengths = frames",
            "timing": f"wall clock; greedy/ours best of {repeats}, others one run; "
                      "ours excludes the exact rescoring (compute_scores=False)",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "loadavg_1min_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
            "python": platform.python_version(), "torch": torch.__version__,
        },
        "rows": rows,
        "notes": notes,
    }


def markdown(result: dict) -> str:
    lines = [
        "| decoder | beam | threads | utt/s (wall) | utt/CPU-s | mean CTC log-lik "
        "| agree greedy % | agree ours % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ours = "-" if r["agree_ours_pct"] is None else f"{r['agree_ours_pct']:.1f}"
        cpu = "-" if r["utt_per_cpu_s"] is None else f"{r['utt_per_cpu_s']:.2f}"
        lines.append(f"| {r['decoder']} | {r['beam_width']} | {r['threads']} | {r['utt_per_s']:.2f} | {cpu} "
                     f"| {r['mean_ctc_loglik']:.3f} | {r['agree_greedy_pct']:.1f} | {ours} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"[8, 300, {NUM_CLASSES}], widths 1 and 10")
    parser.add_argument("--out", type=Path, default=Path("results/bench_decode.json"))
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the numpy reference when pyctcdecode is available")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, reference=not args.no_reference)
    table = markdown(result)
    result["markdown"] = table
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table)
    for note in result["notes"]:
        print(f"- {note}")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
