"""Per-epoch metrics: appended to results/metrics.jsonl and drawn as results/curves.png."""

from __future__ import annotations

import json
from pathlib import Path

METRICS, CURVES = "metrics.jsonl", "curves.png"


def append(results: str | Path, record: dict) -> None:
    path = Path(results) / METRICS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def read(results: str | Path) -> list[dict]:
    path = Path(results) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_after(results: str | Path, epoch: int) -> None:
    """On resume, forget epochs the checkpoint has not seen (they will be redone)."""
    rows = [r for r in read(results) if r.get("epoch", 0) <= epoch]     # epochs count from 1: `epoch` were done
    path = Path(results) / METRICS
    if path.exists():
        from pipeline.atomic import write_text
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def plot(results: str | Path) -> Path | None:
    """results/curves.png: losses, dev PER (trained and averaged weights) and the learning rate by
    epoch. Drawn on a bare Figure: no pyplot, so a notebook's backend is left alone."""
    rows = read(results)
    if not rows:
        return None
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] for r in rows]
    dev = any(r.get("dev_loss") is not None for r in rows)
    fig = Figure(figsize=(13 if dev else 9, 3.6))
    axes = list(fig.subplots(1, 3 if dev else 2))
    axes[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    if dev:
        axes[0].plot(ep, [r["dev_loss"] for r in rows], "s-", label="dev")
        per = axes.pop(1)
        per.plot(ep, [_pct(r.get("dev_per")) for r in rows], "o-", color="C2", label="trained weights")
        if any(r.get("dev_per_averaged") is not None for r in rows):
            per.plot(ep, [_pct(r.get("dev_per_averaged")) for r in rows], "s--", color="C4", label="averaged weights")
        per.set(title="dev PER, greedy (%)", xlabel="epoch")
        per.legend()
        per.xaxis.set_major_locator(MaxNLocator(integer=True))
        per.grid(alpha=0.3)
    axes[0].set(title="CTC loss per target symbol", xlabel="epoch")
    axes[0].legend()
    axes[1].plot(ep, [r["lr"] for r in rows], "o-", color="C3")
    axes[1].set(title="learning rate", xlabel="epoch", yscale="log")
    for a in axes:
        a.grid(alpha=0.3)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    out = Path(results) / CURVES
    from pipeline.atomic import atomic_path
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return out


def _pct(x: float | None) -> float:
    return float("nan") if x is None else 100.0 * x
