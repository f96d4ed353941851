"""Stage 0's part of a run's report: an evaluated split's PER per voice of a synth-speech corpus.

Only the corpus knows what its metadata.tsv means (which voice spoke an utterance, which voices are
variants of one), so this lives here; `phonerec` registers it with training's summary, which never
names a voice and does not import corpora.
"""

from __future__ import annotations

import csv
from pathlib import Path


def per_voice(metadata: Path, scored: Path) -> dict[str, dict] | None:
    """Greedy and beam PER per voice (espeak-ng variants pooled) of an evaluated synth-speech split."""
    if not (metadata.is_file() and scored.is_file()):
        return None
    with open(metadata, newline="") as fh:
        voice = {r["id"]: r["voice"] for r in csv.DictReader(fh, delimiter="\t")}
    out: dict[str, dict] = {}
    with open(scored, newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            if r["id"] not in voice:
                return None                       # metadata of another corpus
            key = voice[r["id"]].split("+")[0]
            if key == "espeak-ng:en-us":
                key = "espeak-ng (all variants)"
            g = out.setdefault(key, {"utterances": 0, "phonemes": 0, "greedy": 0.0, "beam": 0.0})
            g["utterances"] += 1
            g["phonemes"] += len(r["reference"])
            g["greedy"] += float(r["greedy_distance"])
            g["beam"] += float(r["beam_distance"])
    return {k: {"utterances": g["utterances"], "greedy_per": round(g["greedy"] / max(g["phonemes"], 1), 4),
                "beam_per": round(g["beam"] / max(g["phonemes"], 1), 4)} for k, g in sorted(out.items())}
