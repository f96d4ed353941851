"""`phonerec evaluate`: distances and PER on a labelled split (greedy, the beam alone, the beam with
the LM), and the choice of the LM weights on it (`--tune`, and train's choice after training)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import Levenshtein

from pipeline import manifest as mf
from pipeline.atomic import write_json, write_text

from decoding.decoder import DecodePlan

from . import distributed as D
from .checkpoint import Checkpoint, CheckpointError, resolve
from .config import EvaluateConfig
from .data import ShardSource
from .inference import (beam_settings, decode_checkpoint, decode_split, decoding_choice, empty_split_message,
                        results_lock)
from .loading import CompatibilityError
from .tuning import (MAX_EXTENSIONS, RECORD, Choice, DecodeRecord, edges, extend, grid_pairs, parse_values, sha256,
                     weights_folder, write_record)


@dataclass
class Evaluation:
    split: str
    utterances: int
    phonemes: int
    greedy_distance: float
    beam_distance: float
    greedy_per: float
    beam_per: float
    tsv: Path | None = None
    lm_distance: float | None = None     # the beam with the LM (None: decoded without one)
    lm_per: float | None = None
    manifest: object = dataclasses.field(default=None, repr=False)


def evaluate(m: mf.Manifest, hyps: dict[int, dict], tsv: Path | None) -> Evaluation:
    """Distances and PER of decode_split's hypotheses against the references it kept beside them."""
    if not m.labelled:
        raise CompatibilityError(f"split {m.split} has no transcripts to evaluate against")
    if m.num_utterances == 0:
        raise CompatibilityError(f"split {m.split} has no utterances: nothing to evaluate")
    inv = m.inventory
    lm = m.num_utterances > 0 and "lm" in hyps[0]
    rows_out = ["id\treference\tgreedy\tbeam" + ("\tlm" if lm else "") + "\tgreedy_distance\tbeam_distance"
                + ("\tlm_distance" if lm else "") + "\treference_arpabet\tdecoded_arpabet"]
    arpa = lambda labels: " ".join(inv.to_arpabet(labels))      # noqa: E731
    dg = db = dl = 0
    refs = 0
    for r in range(m.num_utterances):                    # manifest order: shard by shard
        ref = inv.to_codes(hyps[r]["ref"])
        g, b = inv.to_codes(hyps[r]["greedy"]), inv.to_codes(hyps[r]["beam"])
        dgi, dbi = Levenshtein.distance(g, ref), Levenshtein.distance(b, ref)
        dg, db, refs = dg + dgi, db + dbi, refs + len(ref)
        if lm:
            h = inv.to_codes(hyps[r]["lm"])
            dli = Levenshtein.distance(h, ref)
            dl += dli
            rows_out.append(f"{m.ids[r]}\t{ref}\t{g}\t{b}\t{h}\t{dgi}\t{dbi}\t{dli}\t{arpa(hyps[r]['ref'])}\t"
                            f"{arpa(hyps[r]['lm'])}")
        else:
            rows_out.append(f"{m.ids[r]}\t{ref}\t{g}\t{b}\t{dgi}\t{dbi}\t{arpa(hyps[r]['ref'])}\t"
                            f"{arpa(hyps[r]['beam'])}")
    n = max(m.num_utterances, 1)
    if tsv is not None:
        write_text(tsv, "\n".join(rows_out) + "\n")
    return Evaluation(split=m.split, utterances=m.num_utterances, phonemes=refs, greedy_distance=dg / n,
                      beam_distance=db / n, greedy_per=dg / max(refs, 1), beam_per=db / max(refs, 1), tsv=tsv,
                      lm_distance=dl / n if lm else None, lm_per=dl / max(refs, 1) if lm else None)


def grid_table(m: mf.Manifest, hyps: dict[int, dict], grid) -> list[dict]:
    """Mean distance and PER of each (alpha, beta) of the grid, best (lowest PER) first."""
    inv = m.inventory
    refs = [inv.to_codes(hyps[r]["ref"]) for r in range(m.num_utterances)]
    phonemes = max(sum(map(len, refs)), 1)
    rows = []
    for pair in grid:
        dist = sum(Levenshtein.distance(inv.to_codes(hyps[r][pair]), refs[r]) for r in range(m.num_utterances))
        rows.append({"alpha": pair[0], "beta": pair[1], "distance": dist / max(m.num_utterances, 1),
                     "per": dist / phonemes})
    return sorted(rows, key=lambda r: (r["per"], r["alpha"], r["beta"]))


def evaluate_split(cfg: EvaluateConfig, *, source: ShardSource | None = None, echo=print,
                   local: bool = False) -> Evaluation | None:
    """`phonerec evaluate`: decode a labelled split greedily, with the beam alone and with the LM
    (decode.json's, or --lm's), write <results>/evaluate-<split>.tsv and .json and print the
    figures. With --tune (or --lm without --alpha/--beta) choose the LM weights on this split and
    record them in <weights>/decode.json (`tune`). Returns the figures on rank 0 (None on the
    others); `local`: run alone even under torchrun (train's choice after its ranks are done)."""
    source = source or ShardSource.create(cfg.fetch_policy(), cfg.workers)
    choice = decoding_choice(cfg)
    writes_weights = (cfg.tune or choice.tune) and cfg.beam_width > 0 and not cfg.no_lm      # decode.json
    with results_lock(cfg, "phonerec evaluate", weights_folder(cfg.weights) if writes_weights else None):
        return _evaluate_split(cfg, source, choice, echo, local)


def _evaluate_split(cfg: EvaluateConfig, source: ShardSource, choice: Choice, echo, local: bool) -> Evaluation | None:
    """evaluate_split() once rank 0 holds --results."""
    m = mf.load(cfg.shards, cfg.split, source.policy)
    if m.num_utterances == 0:
        raise CompatibilityError(f"{empty_split_message(m, cfg.shards)}: nothing to evaluate (a distance of 0 "
                                 "would mean nothing); fix the split and rerun `phonerec shards`")
    ctx = D.local(cfg.device) if local else D.init(cfg.device)
    try:
        if (cfg.tune or choice.tune) and cfg.beam_width > 0 and not cfg.no_lm:
            hyps, beam, table, rec = tune(cfg, m, ctx, choice, source, echo)
            weights = (beam.alpha, beam.beta) if beam.fused else (None, None)
            choice = Choice(beam.lm, *weights, origin="this run's choice")
        else:
            beam = beam_settings(cfg, choice)
            (hyps, _), table, rec = decode_checkpoint(cfg.weights, m, ctx, beam=beam, workers=cfg.workers,
                                                      progress=cfg.progress, source=source), [], None
        if ctx.is_main:
            return _report_evaluation(m, hyps, beam, choice, Path(cfg.results), echo, table, rec,
                                      weights_folder(cfg.weights) / RECORD)
        return None
    finally:
        if not local:
            D.shutdown(ctx)


def tune(cfg: EvaluateConfig, m: mf.Manifest, ctx: D.Context, choice: Choice, source: ShardSource, echo):
    """Choose the LM weights on the split: the beam without the LM and with each pair of the
    --alphas x --betas grid, grown past an edge the best pair sits on (at most MAX_EXTENSIONS
    times); the LM is --lm's, else one estimated on the checkpoint's training splits. Records the
    choice in <weights>/decode.json (rank 0). Returns (hyps with "lm" the best pair's, the
    settings, the grid table, the record)."""
    import time
    t0 = time.perf_counter()
    alphas, betas = parse_values(cfg.alphas, "--alphas"), parse_values(cfg.betas, "--betas")
    lm = choice.lm or estimate_lm(cfg, ctx, source)
    base = beam_settings(cfg, Choice(lm=lm))
    done = grid_pairs(alphas, betas)
    hyps, loaded = decode_checkpoint(cfg.weights, m, ctx, beam=dataclasses.replace(base, grid=done),
                                     workers=cfg.workers, progress=cfg.progress, source=source)
    for _ in range(MAX_EXTENSIONS):
        best = grid_table(m, hyps, done)[0]
        where = edges((best["alpha"], best["beta"]), alphas, betas)
        if not where:
            break
        alphas, betas = extend(alphas, betas, where)
        new = tuple(p for p in grid_pairs(alphas, betas) if p not in done)
        echo(f"  the best LM weights sit on the grid's edge ({', '.join(where)}): also trying {len(new)} more pairs")
        more = decode_split(loaded, m, ctx, beam=dataclasses.replace(base, plain=False, grid=new),
                            workers=cfg.workers, progress=cfg.progress, source=source)
        for r, h in hyps.items():
            h.update({p: more[r][p] for p in new})
        done += new
    table = grid_table(m, hyps, done)
    best = (table[0]["alpha"], table[0]["beta"])
    # the grid's figures come from re-scored n-best lists (WeightGrid); the best pair's own search:
    final = decode_split(loaded, m, ctx, beam=base.with_weights(*best, plain=False),
                         workers=cfg.workers, progress=cfg.progress, source=source)
    for r, h in hyps.items():
        h["lm"] = final[r]["lm"]
    ev = evaluate(m, hyps, None)
    folder = weights_folder(cfg.weights)
    rec = DecodeRecord(
        checkpoint=loaded.path.name, checkpoint_sha256=sha256(loaded.path), split=m.split,
        utterances=m.num_utterances, beam_width=cfg.beam_width, greedy_per=ev.greedy_per, beam_per=ev.beam_per,
        lm=_relative(Path(lm), folder), lm_sha256=sha256(lm), lm_per=ev.lm_per, alpha=best[0], beta=best[1],
        use_lm=ev.lm_per < ev.beam_per, edge=edges(best, alphas, betas), grid=table,
        averaged=bool(loaded.checkpoint.averaged), seconds=round(time.perf_counter() - t0, 1))
    if ctx.is_main:
        write_record(folder, rec)
    beam = base.with_weights(*best) if rec.use_lm else base
    return hyps, beam, table, rec


def estimate_lm(cfg: EvaluateConfig, ctx: D.Context, source: ShardSource) -> str:
    """<weights>/phones-<order>gram.arpa, estimated on the training splits of the checkpoint (rank 0
    writes it; the other ranks read it after a barrier: they need the folder on a shared disk)."""
    from .phone_lm import build_lm
    path = resolve(cfg.weights)
    splits = Checkpoint.load(path).config.get("train") or "train-clean-100"
    if not isinstance(splits, str):
        raise CheckpointError(f"checkpoint {path}: its config's train is {splits!r:.60}, not split names; give "
                              "--lm FILE, or use another checkpoint")
    out = weights_folder(cfg.weights) / f"phones-{cfg.lm_order}gram.arpa"
    if ctx.is_main:
        build_lm(cfg.shards, splits, cfg.lm_order, out, source, progress=cfg.progress)
    D.barrier(ctx)
    return str(out)


def _relative(path: Path, folder: Path) -> str:
    """`path` as a name inside `folder` when it is there (the record moves with the folder)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def _report_evaluation(m: mf.Manifest, hyps: dict[int, dict], beam: DecodePlan, choice: Choice, results: Path,
                       echo, table: list[dict], rec: DecodeRecord | None, record: Path | None = None) -> Evaluation:
    """Score the hypotheses (greedy, beam, and beam + LM), write the TSV and JSON and print the figures."""
    ev = evaluate(m, hyps, results / f"evaluate-{m.split}.tsv")
    lm = "lm" in hyps[0]
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in ev.__dict__.items() if k != "manifest"}
    summary.update(beam_width=beam.width, lm=beam.lm or None if lm else None,
                   alpha=beam.alpha if lm else None, beta=beam.beta if lm else None, lm_from=choice.origin)
    if rec is not None:
        summary.update(lm=rec.lm, alpha=rec.alpha, beta=rec.beta, use_lm=rec.use_lm, lm_grid=table, edge=rec.edge)
    write_json(results / f"evaluate-{m.split}.json", summary)
    if table:
        echo(f"  no LM            PER {100 * ev.beam_per:.2f}%")
        for r in table:
            echo(f"  alpha {r['alpha']:<5g} beta {r['beta']:<4g} PER {100 * r['per']:.2f}%")
    echo(f"{m.split}: {ev.utterances} utterances, {ev.phonemes} phonemes\n"
         f"  greedy: distance {ev.greedy_distance:.3f}, PER {100 * ev.greedy_per:.2f}%\n"
         f"  beam {beam.width}: distance {ev.beam_distance:.3f}, PER {100 * ev.beam_per:.2f}%")
    if lm:
        a, b = (rec.alpha, rec.beta) if rec is not None else (beam.alpha, beam.beta)
        echo(f"  beam {beam.width} + LM (alpha {a:g}, beta {b:g}): distance {ev.lm_distance:.3f}, "
             f"PER {100 * ev.lm_per:.2f}%")
    if rec is not None:
        edge = f"; still on the grid's edge ({', '.join(rec.edge)}): widen --alphas/--betas" if rec.edge else ""
        echo(f"  chosen in {rec.seconds:.0f} s for predict, evaluate and transcribe (recorded in {record}): "
             f"{rec.describe()}{edge}")
    elif lm or choice.origin:
        echo(f"  LM: {choice.origin}")
    _report_phones(m, hyps, "lm" if lm else "beam", results, echo)
    echo(f"  per utterance: {ev.tsv}")
    ev.manifest = m
    return ev


def _report_phones(m: mf.Manifest, hyps: dict[int, dict], key: str, results: Path, echo) -> None:
    """Per-phoneme errors of the `key` decodes (training/scoring.py): evaluate-<split>-phones.tsv,
    evaluate-<split>-confusion.png, the worst phonemes and a few example decodes."""
    from . import scoring
    inv = m.inventory
    triples = [(m.ids[r], inv.to_codes(hyps[r]["ref"]), inv.to_codes(hyps[r][key])) for r in range(m.num_utterances)]
    matrix = scoring.confusion([(ref, hyp) for _, ref, hyp in triples], inv.num_classes,
                               {c: i for i, c in enumerate(inv.codes)})
    rows = scoring.phone_rows(matrix, inv)
    table = results / f"evaluate-{m.split}-phones.tsv"
    scoring.write_phone_table(table, rows)
    png = scoring.plot_confusion(results / f"evaluate-{m.split}-confusion.png", matrix, inv,
                                 f"{m.split}: {'beam + LM' if key == 'lm' else 'beam'} decodes, {m.num_utterances} utterances")
    worst = ", ".join(f"{r['phone']} {100 * r['error_rate']:.0f}%" + (f" (as {r['confused_with']})"
                                                                       if r["confused_with"] else "")
                      for r in rows[:5])
    echo(f"  hardest phonemes: {worst}; all in {table.name}, confusions in {png.name}")
    echo("  examples (good, middling, bad):")
    for line in scoring.examples(triples, inv):
        echo(line)
