"""`phonerec predict`: the test split decoded into the submission CSV, one row per input utterance in
the original order (the manifest's `index`), the predictions TSV and what made them beside it."""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline import manifest as mf
from pipeline.atomic import write_json, write_text
from pipeline.reading import ShardReadError
from pipeline.remote import is_url

from . import distributed as D
from .checkpoint import BEST, LAST
from .config import PredictConfig
from .data import ShardSource
from .inference import (beam_settings, decode_checkpoint, decoding_choice, describe_decoding, empty_split_message,
                        provenance, results_lock)
from .loading import CompatibilityError
from .tuning import RECORD, Choice, weights_folder


def submission_rows(m: mf.Manifest, hyps: dict[int, dict], key: str = "beam") -> tuple[list[tuple[int, str]], list[int]]:
    """(index, code string) for every input utterance in the original order; rejected ones get ''.

    Exactly one row per input utterance: hypotheses of other rows, repeated or out-of-range
    indices (a manifest that does not match its split) raise instead of writing a wrong file."""
    if set(hyps) != set(range(m.num_utterances)):
        raise ShardReadError(f"{len(hyps)} hypotheses for the {m.num_utterances} utterances of {m.split}")
    by_index = {int(m.index[r]): m.inventory.to_codes(h[key]) for r, h in hyps.items()}
    if len(by_index) != len(hyps) or (by_index and min(by_index) < 0) or \
            (m.inputs and by_index and max(by_index) >= m.inputs):
        raise ShardReadError(f"the manifest of {m.split} has repeated or out-of-range original indices "
                             f"({m.inputs} inputs); rebuild it with `phonerec shards`")
    total = max(m.inputs, (max(by_index) + 1) if by_index else 0)
    missing = [i for i in range(total) if i not in by_index]
    return [(i, by_index.get(i, "")) for i in range(total)], missing


DEFAULT_HEADER = ("index", "label")


def submission_header(m: mf.Manifest, header: str | None = None) -> list[str]:
    """The submission's header: `header` (comma-separated) if given, else the split's template's
    (as the edition that shipped it wants), else index,label. With a template, its row count must
    be the split's utterance count: checked before anything is decoded."""
    if m.template and m.template.get("rows") != m.inputs:
        raise CompatibilityError(f"the submission template {m.template.get('file')} has {m.template.get('rows')} "
                                 f"rows, the {m.split} split has {m.inputs} utterances: is it this split's template?")
    if header:
        return [h.strip() for h in header.split(",")]
    return list(m.template["header"]) if m.template else list(DEFAULT_HEADER)


def write_submission(path: str | Path, rows: list[tuple[int, str]], header=DEFAULT_HEADER) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(list(header))
    w.writerows(rows)
    write_text(path, buf.getvalue())


def write_predictions(path: str | Path, m: mf.Manifest, hyps: dict[int, dict], key: str = "beam") -> None:
    """index, id, the greedy, beam (no LM) and, with an LM, lm code strings of every decoded
    utterance in submission order, and the submitted decode (`key`) in ARPAbet: the submission's
    rows with their ids and what each decode made of them."""
    inv = m.inventory
    lm = key == "lm"
    lines = ["index\tid\tgreedy\tbeam" + ("\tlm" if lm else "") + "\tarpabet"]
    for r in sorted(hyps, key=lambda r: int(m.index[r])):
        g = hyps[r]["greedy"]
        cols = [str(int(m.index[r])), m.ids[r], "" if g is None else inv.to_codes(g), inv.to_codes(hyps[r]["beam"])]
        if lm:
            cols.append(inv.to_codes(hyps[r]["lm"]))
        cols.append(" ".join(inv.to_arpabet(hyps[r][key])))
        lines.append("\t".join(cols))
    write_text(path, "\n".join(lines) + "\n")


@dataclass
class Prediction:
    """What `predict` wrote (rank 0): the submission, its rows, the rows left empty, and what made it."""
    manifest: mf.Manifest = dataclasses.field(repr=False)
    submission: Path
    rows: int
    missing: list[int]
    predictions: Path
    decoding: str = ""
    record: Path | None = None


def predict(cfg: PredictConfig, source: ShardSource | None = None) -> Prediction | None:
    """`phonerec predict`: decode a split (every rank its share) into <results>/<output> with one
    row per input utterance in the original order, the ids and every decode beside it in
    predict-<split>.tsv, and what made it (checkpoint, LM and weights) in predict-<split>.json.
    Returns what rank 0 wrote (None on the other ranks)."""
    source = source or ShardSource.create(cfg.fetch_policy(), cfg.workers)
    choice = decoding_choice(cfg)
    if choice.tune:
        raise CompatibilityError(f"--lm {cfg.lm} needs --alpha and --beta, or choose them on dev with `phonerec "
                                 f"evaluate --tune --lm {cfg.lm}` (recorded in decode.json, which predict then uses)")
    if D.main_rank():
        check_output_target(cfg)
    with results_lock(cfg, "phonerec predict"):
        return _predict(cfg, source, choice)


def check_output_target(cfg: PredictConfig) -> None:
    """Rank 0, before decoding: the submission's path is not a folder and not an input (the shards,
    a checkpoint, decode.json, the LM), whatever --results points at."""
    out = Path(cfg.results) / cfg.output
    if out.is_dir():
        raise CompatibilityError(f"--output {cfg.output}: {out} is a folder; choose another name")
    w = weights_folder(cfg.weights)
    inputs = [Path(cfg.weights), w / BEST, w / LAST, w / RECORD] + ([Path(cfg.lm)] if cfg.lm else [])
    if any(p.is_file() and out.exists() and os.path.samefile(p, out) for p in inputs) or \
            (not is_url(str(cfg.shards)) and Path(cfg.shards).resolve() in out.resolve().parents):
        raise CompatibilityError(f"--output {cfg.output}: {out} is an input of this command (the shards, the "
                                 "weights or the LM); write the submission to another --results folder")


def _predict(cfg: PredictConfig, source: ShardSource, choice: Choice) -> Prediction | None:
    """predict() once rank 0 holds --results."""
    m = mf.load(cfg.shards, cfg.split, source.policy)
    if m.num_utterances == 0 and m.inputs:
        raise CompatibilityError(f"{empty_split_message(m, cfg.shards)}: no submission written (its every row would "
                                 "be empty); fix those files and rerun `phonerec shards`")
    columns = submission_header(m, cfg.header or None)
    beam = beam_settings(cfg, choice)
    ctx = D.init(cfg.device)
    try:
        hyps, loaded = decode_checkpoint(cfg.weights, m, ctx, beam=beam, workers=cfg.workers,
                                         progress=cfg.progress, source=source)
        if not ctx.is_main:
            return None
        rows, missing = submission_rows(m, hyps, beam.final)
        out = Path(cfg.results) / cfg.output
        # beside the default submission predict-<split>.*; beside another --output its own, so two never clash
        stem = f"predict-{cfg.split}" if cfg.output == PredictConfig.output else f"{out.stem}.predict-{cfg.split}"
        tsv, record = out.with_name(f"{stem}.tsv"), out.with_name(f"{stem}.json")
        write_submission(out, rows, columns)
        write_predictions(tsv, m, hyps, beam.final)
        write_json(record, provenance(loaded, beam, choice, {"submission": str(out), "rows": len(rows)}))
        return Prediction(manifest=m, submission=out, rows=len(rows), missing=missing, predictions=tsv,
                          decoding=describe_decoding(beam, choice), record=record)
    finally:
        D.shutdown(ctx)
