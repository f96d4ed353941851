"""Decoding with a trained checkpoint: the test submission, dev evaluation and single files.

Every rank decodes its share of the split's shards; rank 0 gathers the hypotheses and
writes the outputs in the split's original order (the manifest's `index`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path

import Levenshtein
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline import manifest as mf
from pipeline.manifest import Stats
from pipeline.atomic import ensure_writable, write_json, write_text
from pipeline.errors import PhonerecError
from pipeline.features import STORAGE_DTYPE
from pipeline.validate import UtteranceError, load_features
from pipeline.verify import check_shards
from pipeline.vocab import F22, Inventory, InventoryError

from decoding import BLANK_SKIP, CTCBeamDecoder, greedy_decode, load_lm, restrict_to_labels

from . import distributed as D
from .config import EvaluateConfig, PredictConfig, SearchConfig, TranscribeConfig
from .checkpoint import BEST, Checkpoint, CheckpointError, resolve
from .data import ShardReadError, ShardSource, damage_report, make_loader, repair_hint, shard_label
from .model import Model, ModelConfig
from .plan import DEFAULT_MAX_FRAMES, BatchOptions, plan_epoch


class CompatibilityError(PhonerecError):
    """Weights and shards (or files) that do not belong together."""


@dataclass(frozen=True)
class BeamSettings:
    """How a split is beam-decoded: the decoding commands' options. ``width`` 0: greedy only.
    ``grid``: also decode with each (alpha, beta) (evaluate's search for the LM weights)."""
    width: int = 10
    threads: int = 1
    decoder: str = "torch"
    lm: str = ""
    alpha: float = 0.5
    beta: float = 2.0
    blank_skip: float = BLANK_SKIP
    grid: tuple[tuple[float, float], ...] = ()

    def decoders(self, inventory: Inventory) -> dict:
        """(alpha, beta) or "beam" -> the CTCBeamDecoder; {} for greedy only. The LM is read once."""
        if self.width <= 0:
            return {}
        lm = load_lm(self.lm, inventory.symbols) if self.lm else None

        def make(alpha, beta):
            return CTCBeamDecoder(labels=inventory.symbols, lm=lm, alpha=alpha, beta=beta,
                                  cutoff_top_n=inventory.num_classes, beam_width=self.width,
                                  num_processes=max(self.threads, 1), log_probs_input=True,
                                  blank_skip=self.blank_skip, backend=self.decoder)
        out = {"beam": make(self.alpha, self.beta)}
        out.update({pair: make(*pair) for pair in self.grid})
        return out


@dataclass
class Loaded:
    model: Model
    checkpoint: Checkpoint
    stats: Stats
    path: Path
    inventory: Inventory = F22          # the symbol inventory it was trained with: its outputs and codes


def checkpoint_inventory(ck: Checkpoint, path: Path) -> Inventory:
    """The checkpoint's symbol inventory, which must describe its model's outputs."""
    try:
        inv = ck.symbol_inventory()
    except InventoryError as exc:
        raise CompatibilityError(f"{path}: trained with a different vocabulary than this version reads "
                                 f"({len(ck.vocab)} symbols: {exc})") from None
    classes = ck.model_config.get("num_classes", F22.num_classes)
    if classes != inv.num_classes:
        raise CompatibilityError(f"{path}: trained with a different vocabulary ({inv.describe()}) than its "
                                 f"model's {classes} outputs; use another checkpoint or retrain")
    return inv


def load_model(weights: str | Path, device: torch.device, name: str = BEST, ctx: D.Context | None = None) -> Loaded:
    """The checkpoint's model, ready to decode. Under torchrun (`ctx`) rank 0 reads the file and
    sends it to the others: their machines need not share its disk."""
    path = resolve(weights, name)
    if ctx is not None and ctx.distributed:
        blob = D.file_from_rank0(ctx, path)
        if blob is None:
            raise CheckpointError(f"no checkpoint at {path} (on the machine of rank 0); train first (`phonerec "
                                  "train`) or point --weights at it")
        ck = Checkpoint.from_bytes(blob, path)
    else:
        ck = Checkpoint.load(path)
    inventory = checkpoint_inventory(ck, path)
    if not ck.stats:
        raise CheckpointError(f"checkpoint {path} holds no normalization statistics, so it is not a phonerec "
                              "checkpoint; use another checkpoint (e.g. best.pt) or retrain")
    model = Model(ModelConfig.from_dict(ck.model_config))
    model.load_state_dict(ck.model)
    model.to(device).eval()
    return Loaded(model=model, checkpoint=ck, stats=Stats.from_json(ck.stats), path=path, inventory=inventory)


def check_compatible(loaded: Loaded, m: mf.Manifest) -> None:
    width = loaded.model.config.input_dim
    if width != m.feature_dim:
        raise CompatibilityError(f"{loaded.path} was trained on {width} features per frame, the {m.split} shards in "
                                 f"{m.location} have {m.feature_dim}: use the model trained on this corpus")
    if not loaded.inventory.matches(m.inventory):
        raise CompatibilityError(f"{loaded.path} was trained with the symbol inventory {loaded.inventory.describe()}, "
                                 f"the {m.split} shards in {m.location} use {m.inventory.describe()}: use the model "
                                 "trained on this corpus, or rebuild the shards with its --inventory")
    want, have = loaded.stats.fingerprint, m.stats.fingerprint
    if want != have:
        raise CompatibilityError(
            f"{loaded.path} was trained on features normalized with other statistics (from {loaded.stats.splits}) "
            f"than the {m.split} shards in {m.location} (from {m.stats.splits}); use the shards the "
            "model was trained with, or retrain")


@torch.no_grad()
def decode_split(loaded: Loaded, m: mf.Manifest, ctx: D.Context, *, beam: BeamSettings = BeamSettings(),
                 greedy: bool = True, max_frames: int = DEFAULT_MAX_FRAMES, workers: int = 2, progress: bool = True,
                 source: ShardSource | None = None) -> dict[int, dict]:
    """Manifest row -> {"greedy": [...], "beam": [...], "ref": labels or None, (alpha, beta): [...] for
    each of ``beam.grid``} for every utterance, gathered on every rank. The search runs where the
    model does (log-probs stay on the GPU)."""
    decoders = beam.decoders(m.inventory)
    plan = plan_epoch(m, seed=0, epoch=0, rank=ctx.rank, world=ctx.world, workers=workers,
                      opts=BatchOptions(max_frames=max(max_frames, int(m.frames.max(initial=1)))),
                      shuffle=False, balance=False)
    out: dict[int, dict] = {}
    bar = tqdm(total=int(sum(len(b) for b in plan.sequence())), desc=f"decode {m.split}", unit="utt",
               disable=not (progress and ctx.is_main), leave=False)
    error = None
    try:
        for batch in make_loader(m, plan, pin_memory=ctx.device.type == "cuda", source=source):
            b = batch.to(ctx.device)
            lp, out_lens = loaded.model(b.feats.float(), b.lengths)
            lp, out_lens = restrict_to_labels(lp.float(), m.inventory), out_lens.cpu()
            g = greedy_decode(lp, out_lens) if greedy or not decoders else [None] * len(out_lens)
            found = {key: dec.best(lp, out_lens) for key, dec in decoders.items()}
            found.setdefault("beam", g)
            labels, llens = batch.labels.tolist(), batch.label_lengths.tolist()
            for i, r in enumerate(batch.rows.tolist()):
                # The reference too (labelled splits): scoring then needs no second read of the shards.
                out[r] = {"greedy": g[i], "ref": labels[i][: llens[i]] if m.labelled else None,
                          **{key: hyps[i] for key, hyps in found.items()}}
            bar.update(len(out_lens))
    except ShardReadError as exc:
        if not ctx.distributed:
            raise
        error = str(exc)                  # gathered below: every rank fails with the same message
    finally:
        bar.close()
    if ctx.distributed:
        parts = [None] * ctx.world
        dist.all_gather_object(parts, (out, error))
        errors = [e for _, e in parts if e]
        if errors:
            raise ShardReadError(errors[0])
        out = {k: v for p, _ in parts for k, v in p.items()}
    if len(out) != m.num_utterances or set(out) != set(range(m.num_utterances)):
        raise ShardReadError(f"decoded {len(out)} of the {m.num_utterances} utterances of {m.split}; "
                             f"run `phonerec shards --verify` and rebuild")
    return out


def empty_split_message(m: mf.Manifest, shards: str | Path) -> str:
    """'split X has no utterances (N inputs, all rejected: see <shards>/rejected.tsv)'."""
    why = (f"{m.inputs} inputs, all rejected: see {Path(shards) / 'rejected.tsv'}" if m.inputs else "0 inputs")
    return f"split {m.split} has no utterances ({why})"


def decode_checkpoint(weights: str | Path, m: mf.Manifest, ctx: D.Context, *, beam: BeamSettings = BeamSettings(),
                      workers: int = 2, progress: bool = True, source: ShardSource | None = None) -> dict[int, dict]:
    """Load best.pt of `weights`, check it fits the split's manifest `m` (read once by the caller,
    from a folder or a URL) and decode the split (decode_split)."""
    source = source or ShardSource()
    loaded = load_model(weights, ctx.device, ctx=ctx)
    check_compatible(loaded, m)
    problems = check_shards(m, policy=source.policy)     # missing or truncated shards: fail before decoding
    if problems:
        found = {shard_label(m, s): why for s, why in problems}
        raise ShardReadError(f"{damage_report(found)}; {repair_hint(m.shard_location(problems[0][0]))}")
    return decode_split(loaded, m, ctx, beam=beam, workers=workers, progress=progress, source=source)


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


def write_predictions(path: str | Path, m: mf.Manifest, hyps: dict[int, dict]) -> None:
    """index, id, greedy and beam code strings of every decoded utterance, in submission order: the
    submission's rows with their ids (and the greedy decode, which costs nothing beside the beam)."""
    inv = m.inventory
    lines = ["index\tid\tgreedy\tbeam"]
    for r in sorted(hyps, key=lambda r: int(m.index[r])):
        g = hyps[r]["greedy"]
        lines.append(f"{int(m.index[r])}\t{m.ids[r]}\t{'' if g is None else inv.to_codes(g)}\t"
                     f"{inv.to_codes(hyps[r]['beam'])}")
    write_text(path, "\n".join(lines) + "\n")


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


def evaluate(m: mf.Manifest, hyps: dict[int, dict], tsv: Path | None) -> Evaluation:
    """Distances and PER of decode_split's hypotheses against the references it kept beside them."""
    if not m.labelled:
        raise CompatibilityError(f"split {m.split} has no transcripts to evaluate against")
    if m.num_utterances == 0:
        raise CompatibilityError(f"split {m.split} has no utterances: nothing to evaluate")
    inv = m.inventory
    rows_out = ["id\treference\tgreedy\tbeam\tgreedy_distance\tbeam_distance"]
    dg = db = 0
    refs = 0
    for r in range(m.num_utterances):                    # manifest order: shard by shard
        ref = inv.to_codes(hyps[r]["ref"])
        g, b = inv.to_codes(hyps[r]["greedy"]), inv.to_codes(hyps[r]["beam"])
        dgi, dbi = Levenshtein.distance(g, ref), Levenshtein.distance(b, ref)
        dg, db, refs = dg + dgi, db + dbi, refs + len(ref)
        rows_out.append(f"{m.ids[r]}\t{ref}\t{g}\t{b}\t{dgi}\t{dbi}")
    n = max(m.num_utterances, 1)
    if tsv is not None:
        write_text(tsv, "\n".join(rows_out) + "\n")
    return Evaluation(split=m.split, utterances=m.num_utterances, phonemes=refs, greedy_distance=dg / n,
                      beam_distance=db / n, greedy_per=dg / max(refs, 1), beam_per=db / max(refs, 1), tsv=tsv)


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def audio_features(path: Path) -> np.ndarray:
    """15 MFCCs per 10 ms of an audio file, extracted exactly as `phonerec synth-speech` does."""
    try:
        from pipeline.features import mfcc_from_wav
        x = mfcc_from_wav(path)
    except ModuleNotFoundError as exc:
        raise UtteranceError(f"reading audio needs the speech extra ({exc.name} is missing): "
                             "pip install -e '.[speech]'") from None
    except Exception as exc:  # noqa: BLE001 - soundfile/librosa errors on a bad file
        msg = " ".join(str(exc).split())[:200]
        raise UtteranceError(f"unreadable audio ({type(exc).__name__}: {msg})") from None
    if x.shape[0] < 1 or not np.isfinite(x).all():
        raise UtteranceError("audio gives no usable frames (empty or not finite)")
    return x


def features_for(loaded: Loaded, path: Path) -> np.ndarray:
    """A raw .npy feature file (or an audio file) normalized exactly as the shards are
    (including the rounding to their storage dtype)."""
    width = loaded.model.config.input_dim
    x = audio_features(path) if path.suffix.lower() in AUDIO_SUFFIXES else load_features(path, width)
    if x.shape[1] != width:
        raise UtteranceError(f"audio gives {x.shape[1]} MFCCs per frame (this project's front-end), the model in "
                             f"{loaded.path} takes {width}: transcribe audio with a model trained on such features")
    return loaded.stats.normalize(x).astype(STORAGE_DTYPE).astype(np.float32)


@torch.no_grad()
def transcribe(loaded: Loaded, paths: list[Path], device: torch.device,
               beam: BeamSettings = BeamSettings()) -> list[tuple[Path, list[int], list[int], torch.Tensor]]:
    """(file, hypothesis, frame of each token, log-probs [T', C]) per file."""
    decoder = beam.decoders(loaded.inventory).get("beam")
    out = []
    for p in paths:
        try:
            feats = features_for(loaded, p)
        except UtteranceError as exc:
            raise UtteranceError(f"{p}: {exc}") from None
        x = torch.from_numpy(feats)[None].to(device)
        lp, ol = loaded.model(x, torch.tensor([x.shape[1]], device=device))
        lp, ol = restrict_to_labels(lp.float().cpu(), loaded.inventory), ol.cpu()
        if decoder is not None:
            res, _, steps, lens = decoder.decode(lp, ol)
            n = int(lens[0, 0])
            hyp, frames = res[0, 0, :n].tolist(), steps[0, 0, :n].tolist()
        else:
            hyp = greedy_decode(lp, ol)[0]
            best = lp[0, : int(ol[0])].argmax(-1)
            keep = (best != 0) & torch.cat([torch.tensor([True]), best[1:] != best[:-1]])
            frames = torch.nonzero(keep).flatten().tolist()
        out.append((p, hyp, frames, lp[0, : int(ol[0])]))
    return out


def plot_posteriorgram(path: Path, log_probs: torch.Tensor, hyp: list[int], frames: list[int], title: str,
                       inventory: Inventory = F22) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = log_probs.exp().numpy().T                # [C, T]
    fig, ax = plt.subplots(figsize=(min(24, 4 + probs.shape[1] / 40), 7))
    ax.imshow(probs, aspect="auto", origin="lower", cmap="magma", interpolation="nearest")
    ax.plot(frames, hyp, "o", ms=3, mfc="none", color="cyan", label="decoded symbols")
    ax.set_yticks(range(inventory.num_classes))
    ax.set_yticklabels(["<b>" if s == "" else s for s in inventory.symbols], fontsize=6)
    ax.set_xlabel("output frame")
    ax.set_title(f"{title}\n{' '.join(inventory.to_arpabet(hyp))[:200]}", fontsize=8)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from pipeline.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


# evaluate's search for the LM weights (with --lm and no --alpha/--beta): 16 decodes of the split. On
# the demo model's dev split a 4-gram's best was alpha 0.5, beta 2 (bench/bench_decode.py --model).
LM_GRID: tuple[tuple[float, float], ...] = tuple((a, b) for a in (0.25, 0.5, 0.75, 1.0) for b in (0.0, 1.0, 2.0, 3.0))


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


def beam_settings(cfg: SearchConfig, grid: tuple = ()) -> BeamSettings:
    """The search a decoding command's options ask for; threads 0 = this machine's CPUs shared among
    the ranks torchrun started on it (no oversubscription)."""
    threads = cfg.threads
    if threads <= 0:
        ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
        threads = max((os.cpu_count() or 1) // ranks, 1)
    return BeamSettings(width=cfg.beam_width, threads=threads, decoder=cfg.decoder, lm=cfg.lm, alpha=cfg.alpha,
                        beta=cfg.beta, blank_skip=cfg.blank_skip, grid=tuple(grid))


@dataclass
class Prediction:
    """What `predict` wrote (rank 0): the submission, its rows, and the rows left empty."""
    manifest: mf.Manifest
    submission: Path
    rows: int
    missing: list[int]
    predictions: Path


def predict(cfg: PredictConfig, source: ShardSource | None = None) -> Prediction | None:
    """`phonerec predict`: decode a split (every rank its share) into <results>/<output> with one
    row per input utterance in the original order, and the ids and greedy decodes beside it in
    predict-<split>.tsv. Returns what rank 0 wrote (None on the other ranks)."""
    source = source or ShardSource.create(cfg.fetch_policy(), cfg.workers)
    if D.main_rank():
        ensure_writable(cfg.results)    # before decoding the whole split, not after
    m = mf.load(cfg.shards, cfg.split, source.policy)
    columns = submission_header(m, cfg.header or None)
    ctx = D.init(cfg.device)
    try:
        hyps = decode_checkpoint(cfg.weights, m, ctx, beam=beam_settings(cfg), workers=cfg.workers,
                                 progress=cfg.progress, source=source)
        if not ctx.is_main:
            return None
        rows, missing = submission_rows(m, hyps)
        out, tsv = Path(cfg.results) / cfg.output, Path(cfg.results) / f"predict-{cfg.split}.tsv"
        write_submission(out, rows, columns)
        write_predictions(tsv, m, hyps)
        return Prediction(manifest=m, submission=out, rows=len(rows), missing=missing, predictions=tsv)
    finally:
        D.shutdown(ctx)


def evaluate_split(cfg: EvaluateConfig, *, tune_lm: bool = False, source: ShardSource | None = None,
                   echo=print) -> mf.Manifest | None:
    """`phonerec evaluate`: decode a labelled split, write <results>/evaluate-<split>.tsv and .json
    and print the figures (rank 0, which gets the manifest back; the other ranks None). With
    `tune_lm` (and an LM) also decode with each LM_GRID pair and score the beam with the best."""
    source = source or ShardSource.create(cfg.fetch_policy(), cfg.workers)
    beam = beam_settings(cfg, LM_GRID if tune_lm and cfg.lm and cfg.beam_width > 0 else ())
    if D.main_rank():
        ensure_writable(cfg.results)    # before decoding the whole split, not after
    m = mf.load(cfg.shards, cfg.split, source.policy)
    if m.num_utterances == 0:
        raise CompatibilityError(f"{empty_split_message(m, cfg.shards)}: nothing to evaluate (a distance of 0 "
                                 "would mean nothing); fix the split and rerun `phonerec shards`")
    ctx = D.init(cfg.device)
    try:
        hyps = decode_checkpoint(cfg.weights, m, ctx, beam=beam, workers=cfg.workers, progress=cfg.progress,
                                 source=source)
        if ctx.is_main:
            _report_evaluation(m, hyps, beam, Path(cfg.results), echo)
            return m
        return None
    finally:
        D.shutdown(ctx)


def _report_evaluation(m: mf.Manifest, hyps: dict[int, dict], beam: BeamSettings, results: Path, echo) -> None:
    """Score the hypotheses (the best grid pair's beam, if a grid was searched), write the TSV and
    JSON and print the figures."""
    import json

    table = grid_table(m, hyps, beam.grid) if beam.grid else []
    if table:
        best = (table[0]["alpha"], table[0]["beta"])
        for r in hyps.values():
            r["beam"] = r[best]
        beam = dataclasses.replace(beam, alpha=best[0], beta=best[1])
    ev = evaluate(m, hyps, results / f"evaluate-{m.split}.tsv")
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in ev.__dict__.items()}
    summary.update(beam_width=beam.width, decoder=beam.decoder, lm=beam.lm or None,
                   alpha=beam.alpha if beam.lm else None, beta=beam.beta if beam.lm else None)
    if table:
        summary["lm_grid"] = table
    write_json(results / f"evaluate-{m.split}.json", summary)
    for r in table:
        echo(f"  alpha {r['alpha']:<5g} beta {r['beta']:<4g} PER {100 * r['per']:.2f}%")
    lm = f" + LM (alpha {beam.alpha:g}, beta {beam.beta:g})" if beam.lm else ""
    echo(f"{m.split}: {ev.utterances} utterances, {ev.phonemes} phonemes\n"
         f"  greedy: distance {ev.greedy_distance:.3f}, PER {100 * ev.greedy_per:.2f}%\n"
         f"  beam {beam.width}{lm}: distance {ev.beam_distance:.3f}, PER {100 * ev.beam_per:.2f}%\n"
         f"  per utterance: {ev.tsv}")
    if table:
        echo(f"  best LM weights: --alpha {beam.alpha:g} --beta {beam.beta:g} (give them to predict)")
    echo(json.dumps(summary))


def transcribe_files(cfg: TranscribeConfig, files: list[str | Path], echo=print, warn=print) -> list[str]:
    """`phonerec transcribe`: print `name<TAB>labels` per file (ARPAbet with cfg.arpabet), one file
    at a time so that a bad file is reported (`warn`) and the others decoded; with cfg.plot a
    posteriorgram of the first. Returns the problems (empty: every file transcribed)."""
    device = D.init(cfg.device).device
    loaded = load_model(cfg.weights, device)
    beam, inv = beam_settings(cfg), loaded.inventory      # the checkpoint's: its outputs, symbols and codes
    failed, first = [], None
    for f in files:
        try:
            [out] = transcribe(loaded, [Path(f)], device, beam)
        except UtteranceError as exc:
            failed.append(f"cannot read features {exc}")
            if len(files) > 1:
                warn(f"error: {failed[-1]}")
            continue
        first = first or out
        echo(f"{out[0].name}\t{' '.join(inv.to_arpabet(out[1])) if cfg.arpabet else inv.to_codes(out[1])}")
    if cfg.plot and first is not None:
        path, hyp, frames, lp = first
        warn(f"posteriorgram: {plot_posteriorgram(Path(cfg.plot), lp, hyp, frames, path.name, inv)}")
    return failed
