"""Stage-1 click commands: `phonerec synth-corpus` and `phonerec shards`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def _split_counts(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for v in values:
        name, sep, n = v.partition("=")
        if not sep or not n.isdigit():
            raise click.BadParameter(f"{v!r}: expected NAME=COUNT, e.g. train-clean-100=28539")
        out[name] = int(n)
    return out


@click.command("synth-corpus")
@click.option("--data", "out", type=click.Path(file_okay=False, path_type=Path), default="data", show_default=True,
              help="Root folder to write the corpus into (standard layout).")
@click.option("--split", "splits", multiple=True, metavar="NAME=COUNT",
              help="A split and its utterance count; repeat. [default: train-clean-100=1000, "
                   "dev-clean=100, test-clean=100]")
@click.option("--unlabelled", default="test-clean", show_default=True,
              help="Comma-separated splits written without transcripts.")
@click.option("--nested-transcripts", is_flag=True,
              help="Write transcripts to transcript/raw/ as the published archive does.")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same corpus.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="Writer processes.")
def synth_corpus(out, splits, unlabelled, nested_transcripts, seed, workers):
    """Write a random corpus with LibriSpeech-like lengths (1-35 s, most 10-16 s).

    Each phoneme is a run of frames near a phoneme-specific mean, so models can learn it;
    it exists so tests and benchmarks have data of the real shape, not to sound like speech.
    """
    from .synth import generate
    counts = _split_counts(splits) if splits else None
    summary = generate(out, counts, seed=seed, unlabelled=tuple(s for s in unlabelled.split(",") if s),
                       nested_transcripts=nested_transcripts, workers=workers)
    for name, s in summary.items():
        click.echo(f"{name}: {s['utterances']} utterances, {s['frames'] / 360000:.2f} h"
                   f"{'' if s['labelled'] else ' (unlabelled)'} -> {out / name}")


@click.command("shards")
@click.option("--data", type=click.Path(path_type=Path), default="data", show_default=True,
              help="Raw corpus root: <data>/<split>/mfcc/*.npy and transcript/[raw/]*.npy.")
@click.option("--shards", "shards_dir", type=click.Path(file_okay=False, path_type=Path), default="shards",
              show_default=True, help="Output folder for stores, statistics, shards and manifests.")
@click.option("--train", default="train-clean-100", show_default=True,
              help="Comma-separated training splits (statistics come from these only).")
@click.option("--dev", default="dev-clean", show_default=True, help="Comma-separated dev splits ('' for none).")
@click.option("--test", default="test-clean", show_default=True, help="Comma-separated test splits ('' for none).")
@click.option("--seed", default=0, show_default=True, help="Seed of the tie-breaking order within equal lengths.")
@click.option("--shard-size-mb", default=16.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Target shard size in MB.")
@click.option("--min-shards", default=8, show_default=True, type=click.IntRange(min=1),
              help="At least this many shards per split (fewer only if the split has fewer utterances), "
                   "so ranks x workers all get data.")
@click.option("--cmn", is_flag=True, help="Subtract each utterance's own mean before global normalization.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="Reader/writer processes.")
@click.option("--strict", is_flag=True, help="Fail on the first rejected utterance instead of reporting it.")
@click.option("--verify", "verify_only", is_flag=True,
              help="Only verify existing shards: sha256, counts, members, every input accounted for.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def shards(data, shards_dir, train, dev, test, seed, shard_size_mb, min_shards, cmn, workers, strict,
           verify_only, quiet):
    """Raw corpus -> zarr stores -> normalized, length-sorted WebDataset shards.

    Rebuilds only what changed since the last run and finishes an interrupted run.
    Rejected utterances are listed with file and reason in <shards>/rejected.tsv.
    """
    from .layout import LayoutError
    from .shards import ShardOptions
    from .store import StrictError

    if verify_only:
        from .verify import verify
        names = [n for n in ",".join([train, dev, test]).split(",") if n]
        from .manifest import available_splits
        have = available_splits(shards_dir)
        if not have:
            raise click.ClickException(f"no manifests under {shards_dir}: run `phonerec shards` first")
        results = verify(shards_dir, [n for n in names if n in have] or have, data if data.is_dir() else None)
        bad = 0
        for split, problems in results.items():
            click.echo(f"{split}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
            for p in problems:
                click.echo(f"  - {p}")
            bad += len(problems)
        if bad:
            raise click.ClickException(f"{bad} problem(s); rebuild with `phonerec shards` "
                                       "(damaged shards are rewritten after deleting them)")
        return

    from .build import build
    try:
        summary = build(data, shards_dir, train=train, dev=dev, test=test,
                        options=ShardOptions(seed=seed, target_mb=shard_size_mb, min_shards=min_shards),
                        workers=workers, cmn=cmn, strict=strict, progress=not quiet,
                        log=lambda m: click.echo(m, err=True))
    except (LayoutError, StrictError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary.table())
    n_rej = len(summary.rejections)
    click.echo(f"{sum(s.kept for s in summary.splits)} utterances kept, {n_rej} rejected "
               f"(see {shards_dir / 'rejected.tsv'}) in {summary.seconds:.1f} s")
    if n_rej:
        for r in summary.rejections[:5]:
            click.echo(f"  rejected {r.path}: {r.reason}", err=True)
        if n_rej > 5:
            click.echo(f"  ... and {n_rej - 5} more", err=True)
    sys.stdout.flush()


@click.command("synth-speech")
@click.option("--data", "out", type=click.Path(file_okay=False, path_type=Path), default="data", show_default=True,
              help="Root folder to write the corpus into (standard layout, plus <split>/metadata.tsv).")
@click.option("--split", "splits", multiple=True, metavar="NAME=COUNT",
              help="A split and its utterance count; repeat. The name must contain train, dev or test "
                   "(that picks its voice set). [default: train-clean-100=3000, dev-clean=200, test-clean=200]")
@click.option("--unlabelled", default="test-clean", show_default=True,
              help="Comma-separated splits written without transcripts.")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same corpus (any --workers).")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="Synthesis processes.")
@click.option("--engines", default="flite,festival,espeak-ng", show_default=True,
              help="Comma-separated synthesizers to use (flite, festival, espeak-ng).")
@click.option("--keep-wav", is_flag=True, help="Also write the audio as <split>/wav/<id>.wav (float32, 16 kHz).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def synth_speech(out, splits, unlabelled, seed, workers, engines, keep_wav, quiet):
    """Write a corpus of synthesized English speech with read-back phoneme labels.

    Real sentences (Debian fortune files) with CMU Pronouncing Dictionary pronunciations are
    rendered by flite, festival and espeak-ng; the phonemes each synthesizer reports it rendered
    become the transcript. Voice, rate, pitch, a +-15 % resampling warp, level and background
    noise (10-30 dB SNR) vary per utterance; train, dev and test use disjoint speakers and
    sentences (dev holds out a human speaker).
    Needs the speech tools: `bash scripts/install-speech-tools.sh` and `pip install -e '.[speech]'`.
    """
    from .speech import MissingToolError, generate
    counts = _split_counts(splits) if splits else None
    try:
        summary = generate(out, counts, seed=seed, unlabelled=tuple(s for s in unlabelled.split(",") if s),
                           workers=workers, progress=not quiet, keep_wav=keep_wav,
                           engines=tuple(e.strip() for e in engines.split(",") if e.strip()))
    except (MissingToolError, FileExistsError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for name, s in summary.items():
        rej = sum(s["rejected"].values())
        click.echo(f"{name}: {s['utterances']} utterances, {s['frames'] / 360000:.2f} h, {s['voice_group']} voices"
                   f"{'' if s['labelled'] else ' (unlabelled)'}, {rej} renderings rejected and redrawn -> {out / name}")


COMMANDS = [synth_corpus, shards]
COMMANDS.append(synth_speech)
