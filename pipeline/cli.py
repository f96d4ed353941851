"""The `phonerec` console script: one click sub-command per stage."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """phonerec: phoneme recognition on MFCC features.

    \b
    Stages:
      synth-corpus  write a LibriSpeech-shaped random corpus (tests, benchmarks)
      synth-speech  write a corpus of synthesized English speech (flite, festival, espeak-ng)
      shards        raw corpus -> zarr stores -> normalized, length-sorted WebDataset shards
      train         stream the shards and train the CNN + BiLSTM CTC model (torchrun-aware)
      predict       beam-decode the test split into results/submission.csv
      evaluate      greedy and beam distance on a labelled split
      transcribe    decode individual .npy feature files (or .wav recordings)
      summary       a short report of a run (corpus, padding, training time, scores)
    """


def _register() -> None:
    """Attach each stage's commands; training commands need torch, which stage 1 does not."""
    from .commands import COMMANDS
    for cmd in COMMANDS:
        main.add_command(cmd)
    try:
        from training.commands import COMMANDS as TRAINING_COMMANDS
    except ModuleNotFoundError as exc:  # pragma: no cover - only without torch
        if exc.name != "torch":
            raise
        return
    for cmd in TRAINING_COMMANDS:
        main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
