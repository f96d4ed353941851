"""Stage-2 click commands (train, predict, evaluate, transcribe, lm); registered on phonerec.cli.
Each parses its config (training/config.py), calls one library function and prints."""

from __future__ import annotations

import click

from pipeline.commands import make_config, usable
from pipeline.cli_options import FieldCommand, click_options, given

from .config import EvaluateConfig, LMConfig, PredictConfig, TrainConfig, TranscribeConfig, train_config


def _model_overrides(values: tuple[str, ...]) -> dict:
    """--set KEY=VALUE pairs, each VALUE read as a YAML value by the strict reader (a syntax error
    or a nested structure is a usage error naming it; the types are checked with the recipe's)."""
    from pipeline.strict import DocumentError, parse
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k.strip():
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE, e.g. lstm_layers=2 or conv_channels=[128,128]",
                                     param_hint="'--set'")
        try:
            out[k.strip()] = parse(val, f"--set {k.strip()}")
        except DocumentError as exc:
            raise click.BadParameter(str(exc).replace(":1:", ":", 1), param_hint="'--set'") from None
    return out


@click.command("train", cls=FieldCommand)
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON recipe of any options below (command-line flags override it).")
@click.option("--set", "model_set", multiple=True, metavar="KEY=VALUE",
              help="Override a model setting, e.g. --set lstm_layers=2 --set conv_channels=[128,128].")
@click_options(TrainConfig)
@click.pass_context
def train(ctx, config_file, model_set, **params):
    """Stream the length-sorted shards and train the CNN + BiLSTM CTC model.

    Runs alone, or on every rank of a torchrun job (`make train NGPU=N`): gloo on CPU,
    nccl on GPU. Writes weights/last.pt (every epoch and every --checkpoint-every steps),
    weights/best.pt (best dev distance), results/metrics.jsonl and results/curves.png.
    Ctrl-C writes a checkpoint at the current step before exiting; so does a damaged shard
    (unless --skip-bad-shards), before stopping with a one-line error.
    """
    from .train import train as run

    try:
        cfg = train_config(config_file, params, given(ctx), _model_overrides(model_set))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    usable(cfg)                         # a bad size or digest is a usage error now, as elsewhere
    try:
        outcome = _run(lambda: run(cfg, log=lambda m: click.echo(m, err=True)), f"{cfg.weights} or {cfg.results}",
                       wrote_nothing=False)
    except ValueError as exc:           # not a PhonerecError: e.g. a bad --set value
        raise click.ClickException(str(exc)) from None
    if outcome.get("signal"):
        ctx.exit(130)   # interrupted (checkpoint written): scripts can tell it from a finished run


def _run(fn, writes: str = "the results", wrote_nothing: bool = True):
    """Map the errors a user can cause that are not PhonerecErrors (which the `phonerec` group
    shows as one line) to one-line messages; a damaged shard stops a decoding command before it
    writes anything, which its message says."""
    from pipeline.atomic import disk_full, disk_full_error
    from .data import ShardReadError, error_message
    try:
        return fn()
    except ShardReadError as exc:
        raise click.ClickException(error_message(exc) + (" (nothing was written)" if wrote_nothing else "")) from None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if disk_full(exc):
            raise disk_full_error(exc, writes) from None
        raise


@click.command("predict", cls=FieldCommand)
@click_options(PredictConfig)
def predict(**params):
    """Beam-decode a split (the test split) into <results>/submission.csv (index,label, or the
    header of the template the test split ships).

    One row per input utterance in the original order (sorted file names), whatever the
    shard order; under torchrun (`make predict NGPU=N`) each rank decodes its share of the
    shards and rank 0 writes the merged file.
    """
    from .data import ShardSource
    from .inference import predict as run

    cfg = make_config(PredictConfig, params)
    source = ShardSource.create(cfg.fetch_policy(), cfg.workers)
    done = _run(lambda: run(cfg, source))
    if done is None:                    # not rank 0
        return
    m = done.manifest
    click.echo(f"wrote {done.submission}: {done.rows} rows ({m.num_utterances} decoded, {done.decoding}); "
               f"ids and every decode beside it in {done.predictions.name}, what made it in {done.record.name}")
    if m.num_utterances == 0:
        click.echo(f"warning: split {m.split} has no utterances: the submission has {done.rows} rows", err=True)
    if done.missing:
        click.echo(f"warning: {len(done.missing)} utterance(s) were rejected by `phonerec shards` and have empty "
                   f"labels (rows {done.missing[:10]}...); see {cfg.shards}/rejected.tsv", err=True)
    _network_note(m, source)


@click.command("evaluate", cls=FieldCommand)
@click_options(EvaluateConfig)
def evaluate(**params):
    """Mean Levenshtein distance and phoneme error rate on a labelled split: greedy, the beam
    alone, and the beam with the LM that <weights>/decode.json records (or --lm's).

    With --tune (or --lm without --alpha/--beta) it chooses the LM weights on this split, as
    `train` does after training: the beam without the LM and with each --alphas x --betas pair,
    the grid grown past an edge its best pair sits on, the choice recorded in decode.json.
    Writes <results>/evaluate-<split>.tsv (id, reference, each decode, distances) and
    <results>/evaluate-<split>.json.
    """
    from .data import ShardSource
    from .inference import evaluate_split

    cfg = make_config(EvaluateConfig, params)
    source = ShardSource.create(cfg.fetch_policy(), cfg.workers)
    ev = _run(lambda: evaluate_split(cfg, source=source, echo=(lambda *_: None) if cfg.json else click.echo))
    if ev is not None:
        if cfg.json:
            from pathlib import Path
            click.echo((Path(cfg.results) / f"evaluate-{ev.split}.json").read_text().strip())
        _network_note(ev.manifest, source)


def _network_note(m, source) -> None:
    """Shards at a URL: one line on what this process's reads did (retries, cache hits)."""
    if m.remote:
        from .loop import network_line
        click.echo(network_line(source.totals()), err=True)


@click.command("transcribe", cls=FieldCommand)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click_options(TranscribeConfig)
def transcribe(files, **params):
    """Decode raw feature files (.npy [T, D], D the width the model was trained on) or recordings
    (.wav/.flac/.ogg, any sample rate; features extracted as `phonerec synth-speech` does); prints
    `name<TAB>labels`, as in a submission.

    Each file is normalized with the statistics stored in the checkpoint. A file over 30 minutes
    (180,000 frames) is refused from its header (split it), and so is anything but a regular file.
    """
    from .inference import transcribe_files

    cfg = make_config(TranscribeConfig, params)
    failed = _run(lambda: transcribe_files(cfg, files, echo=click.echo, warn=lambda m: click.echo(m, err=True))).failed
    if len(files) == 1 and failed:
        raise click.ClickException(failed[0])
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(files)} file(s) could not be read (listed above); "
                                   "the others were transcribed")


@click.command("lm", cls=FieldCommand)
@click_options(LMConfig)
def lm(**params):
    """Estimate a phone n-gram language model (interpolated Kneser-Ney) on the training split's
    transcripts and write it as an ARPA file, for `predict`/`evaluate`/`transcribe --lm`.

    `evaluate --lm FILE` then searches a small grid of LM weights on the dev split and prints the
    best --alpha/--beta for predict.
    """
    from .data import ShardSource
    from .phone_lm import build_lm

    cfg = make_config(LMConfig, params)
    source = ShardSource.create(cfg.fetch_policy(), 0)
    info = _run(lambda: build_lm(cfg.shards, cfg.train, cfg.order, cfg.out_path(), source, progress=cfg.progress))
    click.echo(f"wrote {info['path']}: order {cfg.order}, {info['sentences']} transcripts, {info['phones']} phones, "
               f"n-grams per order {info['ngrams']}")


COMMANDS: list = [train, predict, evaluate, transcribe, lm]
