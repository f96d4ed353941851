"""Per-phoneme scoring of a decoded split: what `evaluate` shows beside the PER.

Each hypothesis is aligned to its reference by Levenshtein's edit operations; every reference
phoneme is then correct, substituted (by which phoneme) or deleted, and every extra hypothesis
phoneme an insertion. From that: a per-phoneme table (how often each is recognized, replaced,
dropped or inserted), a confusion matrix as a PNG (the picture phoneme recognition is judged by)
and a few example decodes.
"""

from __future__ import annotations

from pathlib import Path

import Levenshtein
import numpy as np

from pipeline.atomic import atomic_path, write_text
from pipeline.vocab import Inventory


def confusion(pairs: list[tuple[str, str]], classes: int, code_index: dict[str, int]) -> np.ndarray:
    """[classes + 1, classes + 1] counts over (reference, hypothesis) code strings: row r, column h is
    how often reference class r was decoded as h; the last column counts deletions, the last row
    insertions (index 0, the blank, is never a phoneme)."""
    m = np.zeros((classes + 1, classes + 1), dtype=np.int64)
    gap = classes
    for ref, hyp in pairs:
        for op, i1, i2, j1, j2 in Levenshtein.opcodes(ref, hyp):
            r, h = [code_index[c] for c in ref[i1:i2]], [code_index[c] for c in hyp[j1:j2]]
            if op in ("equal", "replace"):
                np.add.at(m, (r, h), 1)
            elif op == "delete":
                np.add.at(m, (r, [gap] * len(r)), 1)
            else:
                np.add.at(m, ([gap] * len(h), h), 1)
    return m


def phone_rows(m: np.ndarray, inventory: Inventory) -> list[dict]:
    """One row per phoneme that occurs: its count, how many were right, substituted, deleted, how
    often it was inserted, its error rate and what it was most often mistaken for; worst first."""
    gap = m.shape[0] - 1
    rows = []
    for c in range(1, gap):
        count, inserted = int(m[c, :].sum()), int(m[gap, c])
        if not count and not inserted:
            continue
        subs = m[c, :gap].copy()
        subs[c] = 0
        top = int(subs.argmax())
        rows.append({"phone": inventory.symbols[c], "count": count, "correct": int(m[c, c]),
                     "substituted": int(subs.sum()), "deleted": int(m[c, gap]), "inserted": inserted,
                     "error_rate": (count - int(m[c, c]) + inserted) / max(count, 1),
                     "confused_with": inventory.symbols[top] if subs[top] else ""})
    return sorted(rows, key=lambda r: (-r["error_rate"], r["phone"]))


def write_phone_table(path: Path, rows: list[dict]) -> None:
    keys = ["phone", "count", "correct", "substituted", "deleted", "inserted", "error_rate", "confused_with"]
    lines = ["\t".join(keys)] + ["\t".join(f"{r[k]:.4f}" if k == "error_rate" else str(r[k]) for k in keys)
                                 for r in rows]
    write_text(path, "\n".join(lines) + "\n")


def plot_confusion(path: Path, m: np.ndarray, inventory: Inventory, title: str) -> Path:
    """The confusion matrix, each reference row normalized to 1 (log colour scale), phonemes that
    never occur left out; insertions as the last row, deletions as the last column."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure          # no pyplot: a notebook's backend is left alone

    gap = m.shape[0] - 1
    keep = [c for c in range(1, gap) if m[c].sum() or m[:, c].sum()] + [gap]
    sub = m[np.ix_(keep, keep)].astype(np.float64)
    frac = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    names = [inventory.symbols[c] for c in keep[:-1]]
    fig = Figure(figsize=(11, 10))
    ax = fig.subplots()
    im = ax.imshow(np.where(frac > 0, frac, np.nan), cmap="viridis", norm=LogNorm(vmin=1e-3, vmax=1))
    ax.set_xticks(range(len(keep)), [*names, "(deleted)"], rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), [*names, "(inserted)"], fontsize=7)
    ax.set(xlabel="decoded as", ylabel="reference phoneme", title=title)
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the reference phoneme's occurrences")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return path


def examples(pairs: list[tuple[str, str, str]], inventory: Inventory, n: int = 3) -> list[str]:
    """Lines showing `n` decodes (id, reference and hypothesis in ARPAbet), picked at even steps
    through the utterances sorted by their error rate: a good, a middling and a bad one."""
    if not pairs:
        return []
    rate = lambda p: Levenshtein.distance(p[1], p[2]) / max(len(p[1]), 1)    # noqa: E731
    ranked = sorted(pairs, key=lambda p: (rate(p), p[0]))
    picks = sorted({round(k * (len(ranked) - 1) / max(n - 1, 1)) for k in range(n)})
    arpa = lambda codes: " ".join(inventory.to_arpabet([inventory.codes.index(c) for c in codes]))   # noqa: E731
    out = []
    for k in picks:
        uid, ref, hyp = ranked[k]
        out += [f"  {uid} ({100 * rate(ranked[k]):.0f}% errors)", f"    reference: {arpa(ref)}",
                f"    decoded:   {arpa(hyp)}"]
    return out
