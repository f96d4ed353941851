"""Stage 0's part of a run's report: a synth-speech corpus's PER per kind of voice, on dev and test.

Only the corpus knows what its files mean (which voice spoke an utterance, which kind of voice that
is, the test transcripts kept aside in answers.tsv), so this lives here; `phonerec summary`
(phonerec/summary.py, above the stages) calls `per_kind`.

* A labelled split is scored from ``<results>/evaluate-<split>.tsv`` (what `phonerec evaluate` wrote).
* The test split is scored as a user scores a Kaggle submission: ``<results>/submission.csv`` row by
  row against the kept-aside ``<data>/<split>/answers.tsv`` (beam), and the greedy hypotheses of
  ``<results>/predict-<split>.tsv`` when `predict` wrote them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import Levenshtein

from pipeline.vocab import EOS, SOS, encode_transcript, to_codes

from .speech.engines import KINDS, TARGET_KINDS, TARGET_PER, voice_kind
from .speech.generate import ANSWERS, read_answers, read_metadata


@dataclass
class Scored:
    """One utterance: who spoke it, its reference length and the decodes' distances (the beam
    without the LM, and with it where one was used: None otherwise)."""
    voice: str
    kind: str
    phonemes: int
    greedy: int | None
    beam: int
    lm: int | None = None


class NotScored(Exception):
    """Files that do not belong together (another corpus, another submission): said, not guessed."""


def per_kind(data: Path, results: Path, submission: str = "submission.csv") -> dict[str, dict] | None:
    """{split: {source, kinds, voices, target}} for each split of `data` that has a metadata.tsv
    and a scored result under `results`; a split whose files do not match gets {"problem": ...}."""
    data, results = Path(data), Path(results)
    if not data.is_dir():
        return None
    out: dict[str, dict] = {}
    for sdir in sorted(p for p in data.iterdir() if (p / "metadata.tsv").is_file()):
        try:
            if (results / f"evaluate-{sdir.name}.tsv").is_file():
                source = results / f"evaluate-{sdir.name}.tsv"
                rows = _from_evaluation(sdir, source)
            elif (sdir / ANSWERS).is_file() and (results / submission).is_file():
                source = results / submission
                rows = _from_submission(sdir, source, results / f"predict-{sdir.name}.tsv")
            else:
                continue
        except NotScored as exc:
            out[sdir.name] = {"problem": str(exc)}
            continue
        out[sdir.name] = {"source": source.name, **figures(rows)}
    return out or None


def _from_evaluation(sdir: Path, scored: Path) -> list[Scored]:
    voice = {r["id"]: r["voice"] for r in read_metadata(sdir / "metadata.tsv")}
    rows = []
    for r in read_metadata(scored):
        if r["id"] not in voice:
            raise NotScored(f"{scored} scores utterance {r['id']}, which {sdir / 'metadata.tsv'} does not "
                            "hold: metadata of another corpus")
        v = voice[r["id"]]
        lm = int(float(r["lm_distance"])) if r.get("lm_distance") not in (None, "") else None
        rows.append(Scored(v, voice_kind(sdir.name, v) or v, len(r["reference"]), int(float(r["greedy_distance"])),
                           int(float(r["beam_distance"])), lm))
    return rows


def _submission_labels(path: Path) -> dict[int, str]:
    """index -> label of a submission CSV (first column the row index, second the code string)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        try:
            return {int(r[0]): (r[1] if len(r) > 1 else "") for r in reader if r}
        except ValueError as exc:
            raise NotScored(f"{path}: a row's first column is not an index ({exc})") from None


def _from_submission(sdir: Path, submission: Path, predictions: Path) -> list[Scored]:
    answers = read_answers(sdir / ANSWERS)
    labels = _submission_labels(submission)
    if sorted(labels) != list(range(len(answers))):
        raise NotScored(f"{submission} has {len(labels)} rows, {sdir / ANSWERS} {len(answers)}: "
                        "not this split's submission")
    decodes = {}
    if predictions.is_file():
        decodes = {int(r["index"]): r for r in read_metadata(predictions)}
    rows = []
    for a in answers:
        i = int(a["index"])
        ref = to_codes(encode_transcript([SOS, *a["phonemes"].split(), EOS]))
        d = decodes.get(i)
        submitted = None if d is None else d.get("lm", d["beam"])      # with an LM, the submission is its decode
        if d is not None and (d["id"] != a["id"] or submitted != labels[i]):
            raise NotScored(f"{predictions} row {i} is utterance {d['id']}, answers.tsv says {a['id']}, or its decode "
                            "differs from the submission's: files of different runs")
        dist = lambda h: Levenshtein.distance(h, ref)    # noqa: E731
        if d is None:                                     # the submission alone: its decode counts as the beam
            rows.append(Scored(a["voice"], a["kind"] or a["voice"], len(ref), None, dist(labels[i])))
            continue
        rows.append(Scored(a["voice"], a["kind"] or a["voice"], len(ref), dist(d["greedy"]), dist(d["beam"]),
                           dist(d["lm"]) if "lm" in d else None))
    return rows


def _group(rows: list[Scored]) -> dict:
    """PERs of a group: greedy, the beam without the LM, with it (None where no LM was used), and the
    decoder's own output ("final": with the LM where there is one)."""
    n = sum(r.phonemes for r in rows)
    per = lambda xs: None if any(x is None for x in xs) else round(sum(xs) / max(n, 1), 4)   # noqa: E731
    beam, lm = per([r.beam for r in rows]), per([r.lm for r in rows])
    return {"utterances": len(rows), "phonemes": n, "greedy_per": per([r.greedy for r in rows]),
            "beam_per": beam, "lm_per": lm, "final_per": beam if lm is None else lm}


def _voice_key(voice: str) -> str:
    key = voice.split("+")[0]
    return "espeak-ng (all variants)" if key == "espeak-ng:en-us" else key


def figures(rows: list[Scored]) -> dict:
    """PER per kind of voice, per voice (espeak-ng variants pooled) and the target (TARGET_KINDS together)."""
    kinds = {k: _group([r for r in rows if r.kind == k]) for k in dict.fromkeys(r.kind for r in rows)}
    voices = {v: _group([r for r in rows if _voice_key(r.voice) == v])
              for v in sorted({_voice_key(r.voice) for r in rows})}
    target_rows = [r for r in rows if r.kind in TARGET_KINDS]
    target = None
    if target_rows:
        t = _group(target_rows)
        target = {"kinds": [k for k in TARGET_KINDS if k in kinds], "goal_per": TARGET_PER, **t,
                  "met": t["final_per"] <= TARGET_PER}
    return {"kinds": dict(sorted(kinds.items(), key=lambda kv: _kind_order(kv[0]))), "voices": voices,
            "target": target}


def _kind_order(kind: str) -> tuple[int, str]:
    return (KINDS.index(kind), "") if kind in KINDS else (len(KINDS), kind)
