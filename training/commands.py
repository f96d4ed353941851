"""Stage-2 click commands (train, predict, evaluate, transcribe, lm); registered on phonerec.cli.
Each parses its config (training/config.py), calls one library function and prints."""

from __future__ import annotations

import click

from pipeline.cli_options import (FieldCommand, click_options, declare_outputs, given, make_config, model_overrides,
                                  recipe_options)
from pipeline.errors import PhonerecError

from .config import EvaluateConfig, LMConfig, PredictConfig, TrainConfig, TranscribeConfig, train_config


@click.command("train", cls=FieldCommand)
@recipe_options
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

    cfg = make_config(TrainConfig, params, lambda: train_config(config_file, params, given(ctx),
                                                                model_overrides(model_set)))
    declare_outputs(f"{cfg.weights} or {cfg.results}", written_on_damage=True)    # a checkpoint at that step
    outcome = run(cfg, log=lambda m: click.echo(m, err=True))
    if outcome.get("signal"):
        ctx.exit(130)   # interrupted (checkpoint written): scripts can tell it from a finished run


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
    from .submission import predict as run

    cfg = make_config(PredictConfig, params)
    declare_outputs(str(cfg.results))
    source = ShardSource.create(cfg.fetch_policy(), cfg.workers)
    done = run(cfg, source)
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
    from .evaluation import evaluate_split

    cfg = make_config(EvaluateConfig, params)
    declare_outputs(str(cfg.results))
    source = ShardSource.create(cfg.fetch_policy(), cfg.workers)
    ev = evaluate_split(cfg, source=source, echo=(lambda *_: None) if cfg.json else click.echo)
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
    from .transcription import transcribe_files

    cfg = make_config(TranscribeConfig, params)
    if cfg.plot:
        declare_outputs(cfg.plot)           # the one file it writes
    failed = transcribe_files(cfg, files, echo=click.echo, warn=lambda m: click.echo(m, err=True)).failed
    if len(files) == 1 and failed:
        raise PhonerecError(failed[0])
    if failed:
        raise PhonerecError(f"{len(failed)} of {len(files)} file(s) could not be read (listed above); the others "
                            "were transcribed")


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
    declare_outputs(str(cfg.out_path()))
    source = ShardSource.create(cfg.fetch_policy(), 0)
    info = build_lm(cfg.shards, cfg.train, cfg.order, cfg.out_path(), source, progress=cfg.progress)
    click.echo(f"wrote {info['path']}: order {cfg.order}, {info['sentences']} transcripts, {info['phones']} phones, "
               f"n-grams per order {info['ngrams']}")


COMMANDS: list = [train, predict, evaluate, transcribe, lm]
