"""Where a CPU training step's time goes (issue 28's "profile first"): the demo recipe's model on a
demo-shaped batch, each part of the step timed on its own, and torch.profiler's top operators.

Usage (from the repository root):
  python -m bench.profile_step [--config configs/demo.yaml] [--batch 4] [--frames 1250] [--steps 5]
                               [--threads N] [--out results/profile_step.json]

Parts: SpecAugment masking (the recipe's), stem + embedding (``Model._embed``), BiLSTM, classifier,
CTC loss, backward (all of it), gradient clipping + AdamW. The forward parts are timed with forward hooks (wall clock, torch's
intra-op threads as set), the rest around their calls; shares are of the whole step. A synthetic
batch (random features, random labels of a realistic length), so the figures are the model's and
the step's, not the loader's.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training.config import read_config_file
from training.model import build_model


def _model(config: str):
    """The recipe's model, its optimizer (as training makes it) and augmentation."""
    from training.augment import AugmentConfig
    from training.config import TrainConfig
    from training.train import make_optimizer
    cfg = TrainConfig.from_dict(read_config_file(config))
    model = build_model(cfg.preset, **cfg.model)
    return model, make_optimizer(model, cfg), AugmentConfig.from_train(cfg)


def _batch(batch: int, frames: int, dim: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, dim, generator=g)
    lengths = torch.full((batch,), frames, dtype=torch.long)
    label_len = frames // 8                      # about one phoneme per 8 frames of 10 ms
    labels = torch.randint(1, classes, (batch, label_len), generator=g)
    return x, lengths, labels, torch.full((batch,), label_len, dtype=torch.long)


class _Timer:
    """Wall time of the forward parts: the model's embedding (``Model._embed``), the BiLSTM
    (``training.model.run_lstm``, or the stack's forward) and the classifier's layers, by wrapping
    them for the duration of the profile."""

    def __init__(self, model):
        import training.model as tm
        self.totals = {"stem + embedding": 0.0, "BiLSTM": 0.0, "classifier": 0.0}
        model._embed = self._wrap("stem + embedding", model._embed)
        self._run_lstm = tm.run_lstm
        tm.run_lstm = self._wrap("BiLSTM", tm.run_lstm)
        if hasattr(model.lstm, "forward") and not isinstance(model.lstm, torch.nn.LSTM):
            model.lstm.forward = self._wrap("BiLSTM", model.lstm.forward)
        for linear in model.linears:
            linear.forward = self._wrap("classifier", linear.forward)

    def close(self) -> None:
        """Put training.model.run_lstm back (the model's own wrappers go with the model)."""
        import training.model as tm
        tm.run_lstm = self._run_lstm

    def _wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.totals[name] += time.perf_counter() - t0
            return out
        return timed


def profile(config: str, batch: int, frames: int, steps: int, threads: int | None) -> dict:
    """The step's parts and top operators (torch's intra-op threads set to `threads` meanwhile)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _profile(config, batch, frames, steps)
    finally:
        torch.set_num_threads(before)


def _profile(config: str, batch: int, frames: int, steps: int) -> dict:
    torch.manual_seed(0)
    model, opt, aug = _model(config)
    model.train()
    c = model.config
    x, lengths, labels, label_lengths = _batch(batch, frames, c.input_dim, c.num_classes)
    timer = _Timer(model)
    other = {"augmentation": 0.0, "CTC loss": 0.0, "backward": 0.0, "clip + AdamW": 0.0}
    gen = torch.Generator().manual_seed(0)

    def step():
        ta = time.perf_counter()
        xa = aug.apply(x, lengths, gen) if aug.active else x
        t0 = time.perf_counter()
        other["augmentation"] += t0 - ta
        lp, out_lens = model(xa, lengths)
        t1 = time.perf_counter()
        loss = F.ctc_loss(lp.transpose(0, 1), labels, out_lens, label_lengths, blank=0, reduction="sum",
                          zero_infinity=True) / label_lengths.sum()
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    try:
        step()                                   # warm-up (allocations, oneDNN primitives)
        for t in timer.totals:
            timer.totals[t] = 0.0
        other["augmentation"] = 0.0
        forward = 0.0
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            f, ctc, bwd, upd = step()
            forward += f
            other["CTC loss"] += ctc
            other["backward"] += bwd
            other["clip + AdamW"] += upd
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    finally:
        timer.close()
    seconds = {"augmentation": other["augmentation"], **timer.totals,
               "rest of forward": forward - sum(timer.totals.values()),
               **{k: v for k, v in other.items() if k != "augmentation"}}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {
        "config": {"recipe": config, "batch": batch, "frames": frames, "steps": steps,
                   "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
        "step_s": wall / steps, "cpu_s_per_step": cpu / steps, "frames_per_s": batch * frames * steps / wall,
        "parts": {k: {"s_per_step": v / steps, "share": v / wall} for k, v in seconds.items()},
        "top_ops": [{"op": e.key, "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3, "calls": e.count} for e in ops],
    }


def markdown(res: dict) -> str:
    lines = [f"step {1e3 * res['step_s']:.0f} ms ({res['frames_per_s']:,.0f} frames/s, "
             f"{res['cpu_s_per_step'] / res['step_s']:.2f} CPU-s per s), {res['config']['threads']} thread(s)", "",
             "| part | ms per step | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {1e3 * v['s_per_step']:.1f} | {100 * v['share']:.1f} % |" for k, v in res["parts"].items()]
    lines += ["", "| operator (one profiled step) | self CPU ms | calls |", "|---|---:|---:|"]
    lines += [f"| {o['op']} | {o['self_cpu_ms_per_step']:.1f} | {o['calls']} |" for o in res["top_ops"]]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile_step", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=1250)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=Path("results/profile_step.json"))
    a = ap.parse_args(argv)
    res = profile(a.config, a.batch, a.frames, a.steps, a.threads)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print(markdown(res))
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
