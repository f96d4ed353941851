"""Stage-0 click commands: `phonerec synth-corpus` and `phonerec synth-speech` write corpora in the
raw layout (tests, benchmarks and the demo); the pipeline never needs them."""

from __future__ import annotations

from pathlib import Path

import click

from pipeline.features import hours
from pipeline.cli_options import FieldCommand, click_options, declare_outputs, make_config

from .config import SynthCorpusConfig, SynthSpeechConfig


@click.command("synth-corpus", cls=FieldCommand)
@click_options(SynthCorpusConfig)
def synth_corpus(**params):
    """Write a random corpus with LibriSpeech-like lengths (1-35 s, most 10-16 s).

    Each phoneme is a run of frames near a phoneme-specific mean, so models can learn it;
    it exists so tests and benchmarks have data of the real shape, not to sound like speech.
    """
    from .random import generate
    cfg = make_config(SynthCorpusConfig, params)
    summary = generate(cfg.data, cfg.counts(), seed=cfg.seed, unlabelled=cfg.unlabelled_splits(),
                       nested_transcripts=cfg.nested_transcripts, workers=cfg.workers, feature_dim=cfg.feature_dim)
    for name, s in summary.items():
        click.echo(f"{name}: {s['utterances']} utterances, {hours(s['frames']):.2f} h"
                   f"{'' if s['labelled'] else ' (unlabelled)'} -> {Path(cfg.data) / name}")


@click.command("synth-speech", cls=FieldCommand)
@click_options(SynthSpeechConfig)
def synth_speech(**params):
    """Write a corpus of synthesized English speech with read-back phoneme labels.

    Real sentences (Debian fortune files) with CMU Pronouncing Dictionary pronunciations are
    rendered by flite, festival and espeak-ng; the phonemes each synthesizer reports it rendered
    become the transcript. Voice, rate, pitch, a +-15 % resampling warp, level and background
    noise (10-30 dB SNR) vary per utterance; train, dev and test use disjoint speakers and
    sentences (dev holds out a human speaker).
    Needs the speech tools: `bash scripts/install-speech-tools.sh` and `pip install -e '.[speech]'`.
    """
    from .speech import generate
    cfg = make_config(SynthSpeechConfig, params)
    declare_outputs(str(cfg.data))
    summary = generate(cfg.data, cfg.counts(), seed=cfg.seed, unlabelled=cfg.unlabelled_splits(),
                       workers=cfg.workers, progress=cfg.progress, keep_wav=cfg.keep_wav, engines=cfg.engine_names())
    for name, s in summary.items():
        rej = sum(s["rejected"].values())
        click.echo(f"{name}: {s['utterances']} utterances, {hours(s['frames']):.2f} h, {s['voice_group']} voices"
                   f"{'' if s['labelled'] else ' (unlabelled)'}, {rej} renderings rejected and redrawn -> "
                   f"{Path(cfg.data) / name}")


COMMANDS = [synth_corpus, synth_speech]
