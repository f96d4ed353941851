"""The `phonerec` console script: one click group; each stage registers its commands on it."""

from __future__ import annotations

import click

from pipeline.errors import PhonerecError


class _Group(click.Group):
    """Shows every PhonerecError a command lets escape as one line (`Error: ...`, exit status 1), and
    no password of a URL in any error line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """In the order of the stages (as registered), not alphabetically."""
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        """Every error line with the credentials of any URL in it redacted (pipeline.remote.redact)."""
        from pipeline.remote import redact
        try:
            return super().invoke(ctx)
        except PhonerecError as exc:
            raise click.ClickException(redact(str(exc))) from None
        except click.ClickException as exc:
            exc.message = redact(exc.message)
            raise


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main() -> None:
    """phonerec: phoneme recognition on MFCC features (`phonerec COMMAND --help`: a stage's options)."""


# Each command's line in `phonerec --help`, in the order of the stages.
STAGES = {
    "synth-corpus": "write a LibriSpeech-shaped random corpus (tests, benchmarks)",
    "synth-speech": "write a corpus of synthesized English speech (flite, festival, espeak-ng)",
    "shards": "raw corpus -> zarr stores -> normalized, length-sorted WebDataset shards",
    "publish": "copy built shards to a URL (s3://, gs://, file://, a served folder), manifests last",
    "train": "train the CNN + BiLSTM CTC model on the shards, then choose the LM on dev",
    "sweep": "search training options and model settings for the lowest dev PER (Optuna)",
    "predict": "decode the test split into results/submission.csv (with the LM train chose)",
    "evaluate": "greedy, beam and beam + LM distance and PER on a labelled split",
    "transcribe": "decode individual .npy feature files (or .wav recordings)",
    "lm": "estimate a phone n-gram LM (ARPA) on the training transcripts, for --lm",
    "summary": "a short report of a run (corpus, padding, training time, scores)",
}


def _register() -> None:
    """Attach each stage's commands; training commands need torch, which stages 0 and 1 do not."""
    from corpora.commands import COMMANDS as CORPORA
    from pipeline.commands import COMMANDS as PIPELINE
    commands = [*CORPORA, *PIPELINE]
    try:
        from sweep.commands import COMMANDS as SWEEP
        from training.commands import COMMANDS as TRAINING

        from .summary import summary
        TRAINING = [*TRAINING, *SWEEP, summary]
    except ModuleNotFoundError as exc:  # pragma: no cover - only without torch
        if exc.name != "torch":
            raise
        TRAINING = []
    for cmd in sorted([*commands, *TRAINING], key=lambda c: list(STAGES).index(c.name)):
        cmd.short_help = STAGES[cmd.name]
        main.add_command(cmd)


_register()

if __name__ == "__main__":
    main()
