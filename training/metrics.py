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
    rows = [r for r in read(results) if r.get("epoch", -1) < epoch]
    path = Path(results) / METRICS
    if path.exists():
        from pipeline.atomic import write_text
        write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def plot(results: str | Path) -> Path | None:
    rows = read(results)
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train")
    axes[0].plot(ep, [r["dev_loss"] for r in rows], "s-", label="dev")
    axes[0].set(title="CTC loss per target symbol", xlabel="epoch")
    axes[0].legend()
    axes[1].plot(ep, [r["dev_distance"] for r in rows], "o-", color="C2")
    axes[1].set(title="dev mean Levenshtein distance (greedy)", xlabel="epoch")
    axes[2].plot(ep, [r["lr"] for r in rows], "o-", color="C3")
    axes[2].set(title="learning rate", xlabel="epoch", yscale="log")
    for a in axes:
        a.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(results) / CURVES
    from pipeline.atomic import atomic_path
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
