"""Stage-0 click commands: `phonerec synth-corpus` and `phonerec synth-speech` write corpora in the
raw layout (tests, benchmarks and the demo); the pipeline never needs them."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.commands import DEFAULT_WORKERS
from pipeline.features import FEATURE_DIM, hours


def _split_counts(values: tuple[str, ...]) -> dict[str, int]:
    out = {}
    for v in values:
        name, sep, n = v.partition("=")
        if not sep or not n.isdigit():
            raise click.BadParameter(f"{v!r}: expected NAME=COUNT, e.g. train-clean-100=28539")
        out[name] = int(n)
    return out


def _corpus_options(data_help: str, split_help: str):
    """--data, --split and --unlabelled, which both corpus writers take."""
    def wrap(fn):
        fn = click.option("--unlabelled", default="test-clean", show_default=True,
                          help="Comma-separated splits written without transcripts.")(fn)
        fn = click.option("--split", "splits", multiple=True, metavar="NAME=COUNT",
                          help=f"A split and its utterance count; repeat.{split_help}")(fn)
        return click.option("--data", "out", type=click.Path(file_okay=False, path_type=Path), default="data",
                            show_default=True, help=f"Root folder to write the corpus into {data_help}.")(fn)
    return wrap


@click.command("synth-corpus")
@_corpus_options("(standard layout)", " [default: train-clean-100=1000, dev-clean=100, test-clean=100]")
@click.option("--nested-transcripts", is_flag=True,
              help="Write transcripts to transcript/raw/ as the published archive does.")
@click.option("--seed", default=0, show_default=True, help="Seed: same seed, same corpus.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="Writer processes.")
@click.option("--feature-dim", default=FEATURE_DIM, show_default=True, type=click.IntRange(min=1),
              help="Features per frame (the course's editions: 13, 15, 27, 28).")
def synth_corpus(out, splits, unlabelled, nested_transcripts, seed, workers, feature_dim):
    """Write a random corpus with LibriSpeech-like lengths (1-35 s, most 10-16 s).

    Each phoneme is a run of frames near a phoneme-specific mean, so models can learn it;
    it exists so tests and benchmarks have data of the real shape, not to sound like speech.
    """
    from .random import generate
    counts = _split_counts(splits) if splits else None
    summary = generate(out, counts, seed=seed, unlabelled=tuple(s for s in unlabelled.split(",") if s),
                       nested_transcripts=nested_transcripts, workers=workers, feature_dim=feature_dim)
    for name, s in summary.items():
        click.echo(f"{name}: {s['utterances']} utterances, {hours(s['frames']):.2f} h"
                   f"{'' if s['labelled'] else ' (unlabelled)'} -> {out / name}")


@click.command("synth-speech")
@_corpus_options("(standard layout, plus <split>/metadata.tsv)",
                 " The name must contain train, dev or test (that picks its voice set). "
                 "[default: train-clean-100=3000, dev-clean=200, test-clean=200]")
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
        click.echo(f"{name}: {s['utterances']} utterances, {hours(s['frames']):.2f} h, {s['voice_group']} voices"
                   f"{'' if s['labelled'] else ' (unlabelled)'}, {rej} renderings rejected and redrawn -> {out / name}")


COMMANDS = [synth_corpus, synth_speech]
