"""The `phonerec` console script: one click group; each stage registers its commands on it."""

from __future__ import annotations

import click

from pipeline.errors import Interrupted, PhonerecError, UsageProblem


class _Group(click.Group):
    """The one error boundary: what a command lets escape ends as one line, with the exit status
    of pipeline/errors.py's rule (1 the work failed, 2 a usage error, 130 interrupted), and no
    password of a URL in any line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """In the order of the stages (as registered), not alphabetically."""
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        from pipeline.remote import redact
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            exc.message = redact(exc.message)
            raise
        except (PhonerecError, OSError) as exc:
            error = _as_phonerec_error(exc, ctx.meta)
            if error is None:
                raise
        for line in error.details:
            click.echo(f"Error: {redact(line)}", err=True)
        if isinstance(error, UsageProblem):
            raise click.UsageError(redact(str(error))) from None
        if isinstance(error, Interrupted):
            if str(error):
                click.echo(redact(str(error)), err=True)
            ctx.exit(error.exit_code)
        raise click.ClickException(redact(str(error))) from None


def _as_phonerec_error(exc: BaseException, meta: dict) -> PhonerecError | None:
    """`exc` as the PhonerecError the user sees: a full disk names what the command writes, a
    damaged shard of a decoding command says nothing was written, a missing or existing path is
    one line; None: a bug (its traceback shows)."""
    from pipeline.atomic import disk_full, disk_full_error
    writes = meta.get("phonerec.writes", "the outputs")
    if isinstance(exc, OSError) and disk_full(exc):
        return disk_full_error(exc, writes)
    if isinstance(exc, PhonerecError):
        if exc.damaged_input and not meta.get("phonerec.written_on_damage", True):
            return PhonerecError(f"{exc} (nothing was written)")
        return exc
    if isinstance(exc, (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)):
        return PhonerecError(str(exc))
    return None


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
