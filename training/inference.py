"""Decoding a split with a checkpoint, shared by predict, evaluate and train's choice of the decoding:
which decodes run (`DecodePlan` from the options), every rank decoding its share of the shards and
rank 0 gathering the hypotheses; the folder lock of the decoding commands; what made a decode."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from pipeline import manifest as mf
from pipeline.atomic import ensure_writable, folder_locks
from pipeline.reading import ShardReadError, check_shards, repair_hint

from decoding import SearchOptions, greedy_decode, restrict_to_labels
from decoding.decoder import DecodePlan

from . import distributed as D
from .config import SearchConfig, SplitConfig
from .data import ShardSource, damage_report, make_loader, shard_label
from .loading import CompatibilityError, Loaded, check_compatible, load_model
from .plan import DEFAULT_MAX_FRAMES, BatchOptions, plan_epoch
from .tuning import Choice, sha256
from .tuning import resolve as resolve_choice


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


def provenance(loaded: Loaded, beam: DecodePlan, choice: Choice, extra: dict) -> dict:
    """Which checkpoint and which LM made a decode: what a user needs to tell submissions apart."""
    lm = beam.final == "lm"
    return {"checkpoint": str(loaded.path), "checkpoint_sha256": sha256(loaded.path),
            "averaged_weights": bool(loaded.checkpoint.averaged), "epoch": loaded.checkpoint.epoch,
            "beam_width": beam.width, "lm": beam.lm if lm else None,
            "lm_sha256": sha256(beam.lm) if lm else None, "alpha": beam.alpha if lm else None,
            "beta": beam.beta if lm else None, "lm_from": choice.origin, **extra}
