"""Decoding with a trained checkpoint: the test submission, dev evaluation and single files.

Every rank decodes its share of the split's shards; rank 0 gathers the hypotheses and
writes the outputs in the split's original order (the manifest's `index`).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import Levenshtein
import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline import manifest as mf
from pipeline.manifest import Stats
from pipeline.remote import is_url
from pipeline.atomic import ensure_writable, folder_locks, write_json, write_text
from pipeline.errors import PhonerecError
from pipeline.features import FRAME_RATE, STORAGE_DTYPE
from pipeline.validate import UtteranceError, load_features
from pipeline.verify import check_shards
from pipeline.vocab import F22, Inventory, InventoryError

from decoding import CTCBeamDecoder, SearchOptions, greedy_decode, restrict_to_labels
from decoding.decoder import DecodePlan
from decoding.rerank import greedy_frames

from . import distributed as D
from .config import EvaluateConfig, PredictConfig, SearchConfig, SplitConfig, TranscribeConfig
from .checkpoint import BEST, LAST, Checkpoint, CheckpointError, load_weights, model_config_of, resolve
from .tuning import (MAX_EXTENSIONS, RECORD, Choice, DecodeRecord, edges, extend, grid_pairs, parse_values, sha256,
                     weights_folder, write_record)
from .tuning import resolve as resolve_choice
from .data import ShardReadError, ShardSource, damage_report, make_loader, repair_hint, shard_label
from .model import Model, check_fits, device_memory
from .plan import DEFAULT_MAX_FRAMES, BatchOptions, plan_epoch


class CompatibilityError(PhonerecError):
    """Weights and shards (or files) that do not belong together."""


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
    stats = checkpoint_stats(ck, path)
    mcfg = model_config_of(ck, path)
    check_fits(mcfg, training=False, memory=device_memory(device), where=f"the model of {path}")
    model = Model(mcfg)
    load_weights(model, ck.model, path)
    model.to(device).eval()
    return Loaded(model=model, checkpoint=ck, stats=stats, path=path, inventory=inventory)


def checkpoint_stats(ck: Checkpoint, path: Path) -> Stats:
    """The checkpoint's normalization statistics, one per feature, finite (else one line)."""
    try:
        stats = Stats.from_json(ck.stats)
        width = ck.model_config.get("input_dim", stats.mean.shape[-1] if stats.mean.ndim else 0)
        if stats.mean.shape != (width,) or stats.std.shape != (width,) or \
                not (np.isfinite(stats.mean).all() and np.isfinite(stats.std).all() and (stats.std > 0).all()):
            raise ValueError(f"not {width} finite means and positive deviations")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its normalization statistics are damaged "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); use another checkpoint "
                              "(e.g. best.pt) or retrain") from None
    return stats


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
def decode_split(loaded: Loaded, m: mf.Manifest, ctx: D.Context, *, beam: DecodePlan = DecodePlan(),
                 greedy: bool = True, max_frames: int = DEFAULT_MAX_FRAMES, workers: int = 2, progress: bool = True,
                 source: ShardSource | None = None) -> dict[int, dict]:
    """Manifest row -> {"greedy": [...], "beam": [...], "ref": labels or None, (alpha, beta): [...] for
    each of ``beam.grid``} for every utterance, gathered on every rank. The search runs on
    ``beam.search_device`` (the CPU unless asked: the model may stay on its GPU)."""
    decoders = beam.decoders(m.inventory.symbols)
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
            lp, out_lens = restrict_to_labels(lp.float(), m.inventory).to(beam.device()), out_lens.cpu()
            g = greedy_decode(lp, out_lens) if greedy or not decoders else [None] * len(out_lens)
            found = {}
            for key, dec in decoders.items():       # "grid": every (alpha, beta) pair at once
                found.update(dec.best(lp, out_lens) if key == "grid" else {key: dec.best(lp, out_lens)})
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


def decode_checkpoint(weights: str | Path, m: mf.Manifest, ctx: D.Context, *, beam: DecodePlan = DecodePlan(),
                      workers: int = 2, progress: bool = True,
                      source: ShardSource | None = None) -> tuple[dict[int, dict], Loaded]:
    """Load best.pt of `weights`, check it fits the split's manifest `m` (read once by the caller,
    from a folder or a URL) and decode the split (decode_split). Returns the hypotheses and the model."""
    source = source or ShardSource()
    loaded = load_model(weights, ctx.device, ctx=ctx)
    check_compatible(loaded, m)
    problems = check_shards(m, policy=source.policy)     # missing or truncated shards: fail before decoding
    if problems:
        found = {shard_label(m, s): why for s, why in problems}
        raise ShardReadError(f"{damage_report(found)}; {repair_hint(m.shard_location(problems[0][0]))}")
    return decode_split(loaded, m, ctx, beam=beam, workers=workers, progress=progress, source=source), loaded


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


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def audio_features(path: Path) -> np.ndarray:
    """15 MFCCs per 10 ms of an audio file, extracted exactly as `phonerec synth-speech` does."""
    from pipeline.features import AudioTooShort
    try:
        from pipeline.features import mfcc_from_wav
        x = mfcc_from_wav(path)
    except AudioTooShort as exc:
        raise UtteranceError(f"audio of {exc}") from None
    except ModuleNotFoundError as exc:
        raise UtteranceError(f"reading audio needs the speech extra ({exc.name} is missing): "
                             "pip install -e '.[speech]'") from None
    except Exception as exc:  # noqa: BLE001 - soundfile/librosa errors on a bad file
        msg = " ".join(str(exc).split())[:200]
        raise UtteranceError(f"unreadable audio ({type(exc).__name__}: {msg})") from None
    if x.shape[0] < 1 or not np.isfinite(x).all():
        raise UtteranceError("audio gives no usable frames (empty or not finite)")
    return x


# The longest input transcribe decodes in one pass (30 minutes at 10 ms): the model's memory grows
# with the length (a 2,000,000-frame input asked for 8.3 GB at once), so longer ones are refused from
# their header, before their samples are read.
MAX_INPUT_FRAMES = 30 * 60 * FRAME_RATE


def check_input(path: Path, max_frames: int = MAX_INPUT_FRAMES) -> None:
    """A regular file (a FIFO, device or socket is refused before it is opened, whatever its
    name) whose header claims at most `max_frames` frames (a .npy's shape, an audio file's length)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise UtteranceError(f"cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UtteranceError("is not a regular file (a FIFO, device or socket); give a .npy or audio file")
    frames = _claimed_frames(path)
    if frames is not None and frames > max_frames:
        raise UtteranceError(f"holds {frames:,} frames ({frames / FRAME_RATE / 60:.0f} minutes), over transcribe's limit "
                             f"of {max_frames:,} ({max_frames / FRAME_RATE / 60:.0f} minutes) in one pass; split it")


def _claimed_frames(path: Path) -> int | None:
    """The frames a file's header claims (None where it cannot say: its reader reports why)."""
    try:
        if path.suffix.lower() in AUDIO_SUFFIXES:
            import soundfile as sf
            info = sf.info(str(path))
            return int(info.frames * FRAME_RATE // max(info.samplerate, 1)) + 1
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape = read(fh)[0]                    # the header only: a literal, no pickle
        return int(shape[0]) if shape else None
    except Exception:  # noqa: BLE001 - a damaged or unknown header: the reader's own message says what
        return None


def features_for(loaded: Loaded, path: Path) -> np.ndarray:
    """A raw .npy feature file (or an audio file) normalized exactly as the shards are
    (including the rounding to their storage dtype), after check_input."""
    check_input(path)
    width = loaded.model.config.input_dim
    x = audio_features(path) if path.suffix.lower() in AUDIO_SUFFIXES else load_features(path, width)
    if x.shape[1] != width:
        raise UtteranceError(f"audio gives {x.shape[1]} MFCCs per frame (this project's front-end), the model in "
                             f"{loaded.path} takes {width}: transcribe audio with a model trained on such features")
    return loaded.stats.normalize(x).astype(STORAGE_DTYPE).astype(np.float32)


@torch.no_grad()
def transcribe(loaded: Loaded, paths: list[Path], device: torch.device,
               beam: DecodePlan = DecodePlan()) -> list[tuple[Path, list[int], list[int], torch.Tensor]]:
    """(file, hypothesis, frame of each token, log-probs [T', C]) per file."""
    decoder = beam.decoders(loaded.inventory.symbols).get(beam.final)
    out = []
    for p in paths:
        try:
            feats = features_for(loaded, p)
        except UtteranceError as exc:
            raise UtteranceError(f"{p}: {exc}") from None
        x = torch.from_numpy(feats)[None].to(device)
        lp, ol = loaded.model(x, torch.tensor([x.shape[1]], device=device))
        lp, ol = restrict_to_labels(lp.float().cpu(), loaded.inventory), ol.cpu()
        out.append((p, *_hypothesis_frames(decoder, lp, ol), lp[0, : int(ol[0])]))
    return out


def _hypothesis_frames(decoder: CTCBeamDecoder | None, lp: torch.Tensor, ol: torch.Tensor):
    """(hypothesis, the frame of each token) of one utterance: the decoder's best (re-ranked, as
    predict keeps it) with its n-best row's timesteps, or the greedy path's and its frames."""
    starts, counts = greedy_frames(lp, ol, blank=0)
    greedy = (greedy_decode(lp, ol)[0], starts[0, : int(counts[0])].tolist())
    if decoder is None:
        return greedy
    hyp = decoder.best(lp, ol)[0]
    res, _, steps, lens = decoder.decode(lp, ol)
    for j in range(res.shape[1]):
        n = int(lens[0, j])
        if res[0, j, :n].tolist() == hyp:
            return hyp, steps[0, j, :n].tolist()
    return greedy                        # the re-ranking chose the greedy path's hypothesis


def plot_posteriorgram(path: Path, log_probs: torch.Tensor, hyp: list[int], frames: list[int], title: str,
                       inventory: Inventory = F22) -> Path:
    from matplotlib.figure import Figure           # no pyplot: a notebook's backend is left alone

    probs = log_probs.exp().numpy().T                # [C, T]
    fig = Figure(figsize=(min(24, 4 + probs.shape[1] / 40), 7))
    ax = fig.subplots()
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
    return path


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


def beam_settings(cfg: SearchConfig, choice: Choice | None = None, *, plain: bool = True,
                  grid: tuple = ()) -> DecodePlan:
    """The search a decoding command's options ask for, with the LM of `choice`; threads 0 = this
    machine's CPUs shared among the ranks torchrun started on it (no oversubscription)."""
    threads = cfg.threads
    if threads <= 0:
        ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
        threads = max((os.cpu_count() or 1) // ranks, 1)
    choice = choice or Choice()
    if cfg.search_device == "cuda" and not torch.cuda.is_available():
        raise CompatibilityError("--search-device cuda: CUDA is not available on this machine; use --search-device cpu")
    plan = DecodePlan(SearchOptions(beam_width=cfg.beam_width, blank_skip=cfg.blank_skip), lm=choice.lm,
                      threads=threads, search_device=cfg.search_device, plain=plain, grid=tuple(grid))
    return plan if choice.alpha is None or choice.beta is None else plan.with_weights(choice.alpha, choice.beta)


def decoding_choice(cfg: SearchConfig) -> Choice:
    """The LM a decoding command uses: its flags, else <weights>/decode.json (training.tuning)."""
    return resolve_choice(cfg.weights, cfg.lm, cfg.alpha, cfg.beta, cfg.no_lm, cfg.beam_width)


def describe_decoding(beam: DecodePlan, choice: Choice) -> str:
    """'beam width 50 + LM weights/phones-4gram.arpa (alpha 0.75, beta 2; from weights/decode.json)'."""
    if beam.width <= 0:
        return "greedy"
    if beam.final != "lm":
        return f"beam width {beam.width}, {choice.origin}"
    return f"beam width {beam.width} + LM {beam.lm} (alpha {beam.alpha:g}, beta {beam.beta:g}; from {choice.origin})"


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


def results_lock(cfg: SplitConfig, writer: str, weights: Path | None = None):
    """Rank 0 holds --results (and the weights folder when it writes decode.json there) for the
    command: one writer per folder; the other ranks write nothing."""
    if not D.main_rank():
        return contextlib.nullcontext()
    folders = [cfg.results] + ([weights] if weights is not None else [])
    for f in folders:
        ensure_writable(f)              # before decoding the whole split, not after
    hint = "another --results folder" + (" and --weights run" if weights is not None else "")
    return folder_locks(folders, writer, f"wait for it to end, or give this one {hint}")


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


def provenance(loaded: Loaded, beam: DecodePlan, choice: Choice, extra: dict) -> dict:
    """Which checkpoint and which LM made a decode: what a user needs to tell submissions apart."""
    lm = beam.final == "lm"
    return {"checkpoint": str(loaded.path), "checkpoint_sha256": sha256(loaded.path),
            "averaged_weights": bool(loaded.checkpoint.averaged), "epoch": loaded.checkpoint.epoch,
            "beam_width": beam.width, "lm": beam.lm if lm else None,
            "lm_sha256": sha256(beam.lm) if lm else None, "alpha": beam.alpha if lm else None,
            "beta": beam.beta if lm else None, "lm_from": choice.origin, **extra}


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


@dataclass
class Transcription:
    """What `transcribe` made of one file: its symbols (ARPAbet) and one-character codes."""
    file: Path
    arpabet: list[str]
    codes: str


@dataclass
class Transcribed:
    """`transcribe_files`' result: a Transcription per file read, and a problem per file that was not."""
    done: list[Transcription]
    failed: list[str]


def transcribe_files(cfg: TranscribeConfig, files: list[str | Path], echo=print, warn=print) -> Transcribed:
    """`phonerec transcribe`: print `name<TAB>labels` per file (ARPAbet with cfg.arpabet), one file
    at a time so that a bad file is reported (`warn`) and the others decoded; with cfg.plot a
    posteriorgram of the first. Returns the transcriptions and the problems."""
    if cfg.plot:                         # a folder that is a file: one line now, not after decoding
        ensure_writable(Path(cfg.plot).parent)
    device = D.init(cfg.device).device
    choice = decoding_choice(cfg)
    if choice.tune:
        raise CompatibilityError(f"--lm {cfg.lm} needs --alpha and --beta, or choose them on dev with `phonerec "
                                 f"evaluate --tune --lm {cfg.lm}` (recorded in decode.json, which transcribe then uses)")
    loaded = load_model(cfg.weights, device)
    beam, inv = beam_settings(cfg, choice, plain=False), loaded.inventory   # the checkpoint's symbols and codes
    failed, first, done = [], None, []
    for f in files:
        try:
            [out] = transcribe(loaded, [Path(f)], device, beam)
        except UtteranceError as exc:
            failed.append(f"cannot read features {exc}")
            if len(files) > 1:
                warn(f"error: {failed[-1]}")
            continue
        first = first or out
        done.append(Transcription(out[0], inv.to_arpabet(out[1]), inv.to_codes(out[1])))
        echo(f"{out[0].name}\t{' '.join(done[-1].arpabet) if cfg.arpabet else done[-1].codes}")
    if cfg.plot and first is not None:
        path, hyp, frames, lp = first
        warn(f"posteriorgram: {plot_posteriorgram(Path(cfg.plot), lp, hyp, frames, path.name, inv)}")
    return Transcribed(done, failed)
