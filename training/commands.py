"""Stage-2 click commands (train, predict, evaluate, transcribe); registered on phonerec.cli."""

from __future__ import annotations

import os

import click

from pipeline.commands import FETCH_OPTIONS, with_options

from .config import RANGES, DecodeConfig, TrainConfig, read_config_file

_D = TrainConfig()
_DD = DecodeConfig()


def ranged(name: str, kind: type = int):
    """The click type of a numeric option, from config.RANGES (so a flag and a recipe agree)."""
    r = RANGES[name]
    if kind is int:
        return click.IntRange(min=r.low, max=r.high)
    return click.FloatRange(min=r.low, max=r.high, min_open=r.open_low)


class _PresetChoice(click.Choice):
    """click.Choice over the model presets (training/model.py's PRESETS), read when first needed:
    importing the model imports torch, which the other stages' commands do not need."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self) -> tuple[str, ...]:
        from .model import PRESETS
        return tuple(PRESETS)

    @choices.setter
    def choices(self, value) -> None:      # click.Choice.__init__ assigns it
        pass


_SHARDS_HELP = ("Folder written by `phonerec shards`, or the URL it was published to (http(s)://, s3://, gs://, "
                "file://; `phonerec publish`).")


def _fetch_options(fn):
    """Options for shards at a URL (train, predict, evaluate): retries and timeout (shared with
    `shards --verify`), and a local cache."""
    options = [
        *FETCH_OPTIONS,
        click.option("--shard-cache", default=_D.shard_cache, metavar="DIR",
                     help="Keep verified shards fetched from a URL here; later epochs read them from disk."),
        click.option("--shard-cache-size", default=_D.shard_cache_size, show_default=True, metavar="SIZE",
                     help="Evict the least recently used cached shards above this size, e.g. 20G (0 = no limit)."),
    ]
    return with_options(options)(fn)


def _source(opts: dict, workers: int):
    """The ShardSource of the fetch options (popped from opts); a bad size is a usage error."""
    from pipeline.remote import POLICY_OPTIONS

    from .config import fetch_policy
    from .data import ShardSource
    try:
        policy = fetch_policy({k: opts.pop(k) for k in POLICY_OPTIONS})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return ShardSource.create(policy, workers)


def _model_overrides(values: tuple[str, ...]) -> dict:
    import yaml
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep:
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE, e.g. lstm_layers=2 or conv_channels=[128,128]")
        out[k.strip()] = yaml.safe_load(val)
    return out


@click.command("train")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON recipe of any options below (command-line flags override it).")
@click.option("--shards", default=_D.shards, show_default=True, help=_SHARDS_HELP)
@click.option("--weights", default=_D.weights, show_default=True, help="Checkpoint folder (last.pt, best.pt, config.json).")
@click.option("--results", default=_D.results, show_default=True, help="Folder for metrics.jsonl and curves.png.")
@click.option("--train", "train_splits", default=_D.train, show_default=True, help="Comma-separated training splits.")
@click.option("--dev", default=_D.dev, show_default=True, help="Dev split for per-epoch validation ('' for none).")
@click.option("--epochs", type=ranged("epochs", int), default=_D.epochs, show_default=True,
              help="Epochs to train (with --time-budget: the most it may plan).")
@click.option("--time-budget", type=ranged("time_budget", float), default=_D.time_budget, show_default=True,
              metavar="MINUTES", help="Train as many epochs as fit in this many minutes, planned from the first "
                                      "steps' speed, the learning-rate schedule spanning them (0 = --epochs).")
@click.option("--preset", default=_D.preset, show_default=True,
              type=_PresetChoice(),
              help="Model architecture; parameters at 15 features and 43 classes (time downsampling): "
                   "model1 0.16 M, model2 0.32 M, model3 1.33 M (x1); default 4.84 M (x2); large 22.33 M, "
                   "f22-best 19.76 M, s24-pblstm 19.04 M, f22-best-cpu 2.54 M, s24-pblstm-cpu 2.82 M (x4).")
@click.option("--set", "model_set", multiple=True, metavar="KEY=VALUE",
              help="Override a model setting, e.g. --set lstm_layers=2 --set conv_channels=[128,128].")
@click.option("--seed", type=ranged("seed", int), default=_D.seed, show_default=True, help="Fixes data order, initialisation and augmentation.")
@click.option("--max-frames", type=ranged("max_frames", int), default=_D.max_frames, show_default=True,
              help="Frame budget per batch: utterances x longest utterance <= this.")
@click.option("--max-utts", type=ranged("max_utts", int), default=_D.max_utts, show_default=True, help="At most this many utterances per batch.")
@click.option("--workers", type=ranged("workers", int), default=_D.workers, show_default=True, help="DataLoader workers per rank (0 = in-process; at most 4 x this machine's cores).")
@click.option("--lr", type=ranged("lr", float), default=_D.lr, show_default=True, help="Peak learning rate (AdamW).")
@click.option("--weight-decay", type=ranged("weight_decay", float), default=_D.weight_decay, show_default=True)
@click.option("--scheduler", default=_D.scheduler, show_default=True,
              type=click.Choice(["cosine", "onecycle", "plateau", "none"]),
              help="cosine: warm-up then cosine per step; plateau: ReduceLROnPlateau on dev distance.")
@click.option("--warmup", type=ranged("warmup", float), default=_D.warmup, show_default=True, help="Warm-up fraction of all steps (cosine).")
@click.option("--plateau-patience", type=ranged("plateau_patience", int), default=_D.plateau_patience, show_default=True)
@click.option("--plateau-factor", type=ranged("plateau_factor", float), default=_D.plateau_factor, show_default=True)
@click.option("--clip", type=ranged("clip", float), default=_D.clip, show_default=True, help="Gradient-norm clipping (0 = off).")
@click.option("--amp/--no-amp", default=_D.amp, show_default=True, help="Mixed precision (CUDA only).")
@click.option("--spec-augment/--no-spec-augment", default=_D.spec_augment, show_default=True,
              help="Time and feature masking on training batches.")
@click.option("--time-masks", type=ranged("time_masks", int), default=_D.time_masks, show_default=True)
@click.option("--time-width", type=ranged("time_width", int), default=_D.time_width, show_default=True)
@click.option("--freq-masks", type=ranged("freq_masks", int), default=_D.freq_masks, show_default=True)
@click.option("--freq-width", type=ranged("freq_width", int), default=_D.freq_width, show_default=True)
@click.option("--noise-std", type=ranged("noise_std", float), default=_D.noise_std, show_default=True, help="Gaussian input noise (0 = off).")
@click.option("--checkpoint-every", type=ranged("checkpoint_every", int), default=_D.checkpoint_every, show_default=True,
              help="Also write weights/last.pt every N steps (0 = at epoch ends only).")
@click.option("--max-steps", type=ranged("max_steps", int), default=_D.max_steps, show_default=True, help="Cap on steps per epoch (0 = all).")
@click.option("--resume", is_flag=True, help="Continue from weights/last.pt at its exact step.")
@click.option("--skip-bad-shards", is_flag=True, default=_D.skip_bad_shards,
              help="Check every shard's sha256 first and train without the damaged ones (reported in the log, "
                   "metrics.jsonl and the checkpoint) instead of stopping.")
@_fetch_options
@click.option("--device", default=_D.device, show_default=True, help="auto, cpu or cuda.")
@click.option("--tune-host/--no-tune-host", default=_D.tune_host, show_default=True,
              help="Speed-ups detected on this machine (glibc: malloc keeps freed memory between steps); "
                   "results do not depend on them.")
@click.option("--tensorboard", is_flag=True, default=_D.tensorboard,
              help="Also write the scalars of metrics.jsonl as TensorBoard events in --results "
                   "(needs `pip install -e '.[tensorboard]'`).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def train(ctx, config_file, train_splits, model_set, quiet, **opts):
    """Stream the length-sorted shards and train the CNN + BiLSTM CTC model.

    Runs alone, or on every rank of a torchrun job (`make train NGPU=N`): gloo on CPU,
    nccl on GPU. Writes weights/last.pt (every epoch and every --checkpoint-every steps),
    weights/best.pt (best dev distance), results/metrics.jsonl and results/curves.png.
    Ctrl-C writes a checkpoint at the current step before exiting; so does a damaged shard
    (unless --skip-bad-shards), before stopping with a one-line error.
    """
    from .train import train as run

    try:
        cfg = _train_config(ctx, config_file, train_splits, model_set, quiet, opts)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        cfg.fetch_policy()             # a bad size is a usage error now, as for predict and evaluate
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    from pipeline.atomic import ensure_writable

    from .distributed import main_rank
    if main_rank():                    # only rank 0 writes (other machines need not share its disk)
        ensure_writable(cfg.weights)   # before any step: not after an epoch of training
        ensure_writable(cfg.results)
    try:
        outcome = run(cfg, log=lambda m: click.echo(m, err=True))
    except (ValueError, FileNotFoundError) as exc:     # not PhonerecErrors: e.g. a bad --set value
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        from pipeline.atomic import disk_full, disk_full_error
        if disk_full(exc):
            raise disk_full_error(exc, f"{cfg.weights} or {cfg.results}") from None
        raise
    if outcome.get("signal"):
        ctx.exit(130)   # interrupted (checkpoint written): scripts can tell it from a finished run


def _train_config(ctx, config_file, train_splits, model_set, quiet, opts) -> TrainConfig:
    """The recipe file's values, overridden by the flags given explicitly on the command line."""
    values = read_config_file(config_file) if config_file else {}
    if "train_splits" in values:
        values["train"] = values.pop("train_splits")
    cli = dict(opts, train=train_splits, model=_model_overrides(model_set), progress=not quiet)
    src = {"train": "train_splits", "model": "model_set", "progress": "quiet"}
    for key, val in cli.items():
        param = src.get(key, key)
        explicit = ctx.get_parameter_source(param) not in (click.core.ParameterSource.DEFAULT, None)
        if key == "model" and explicit and isinstance(values.get("model"), dict):
            val = {**values["model"], **val}     # --set overrides single model settings of the recipe
        if explicit or key not in values:
            values[key] = val
    return TrainConfig.from_dict(values)


def _run_inference(fn):
    """Map the errors a user can cause that are not PhonerecErrors (which the `phonerec` group
    shows as one line) to one-line messages; a damaged shard also says that nothing was written."""
    from pipeline.atomic import disk_full, disk_full_error
    from .data import ShardReadError, error_message
    try:
        return fn()
    except ShardReadError as exc:
        raise click.ClickException(f"{error_message(exc)} (nothing was written)") from None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        if disk_full(exc):
            raise disk_full_error(exc, "the results") from None
        raise


def _auto_threads(ctx, param, value):
    """0 = this machine's CPUs shared among the ranks torchrun started on it (no oversubscription)."""
    if value and value > 0:
        return value
    ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    return max((os.cpu_count() or 1) // ranks, 1)


_threads = click.option("--threads", type=ranged("threads", int), default=_DD.threads, show_default=True, callback=_auto_threads,
                        help="Beam-search threads per rank (0 = CPUs / ranks on this machine).")
_weights = click.option("--weights", default=_DD.weights, show_default=True,
                        help="Checkpoint folder (uses best.pt) or a checkpoint file.")
_device = click.option("--device", default=_DD.device, show_default=True, help="auto, cpu or cuda.")


_BEAM_OPTIONS = [
    click.option("--decoder", type=click.Choice(["torch", "fast-ctc-decode"]), default=_DD.decoder, show_default=True,
                 help="torch: the batched prefix beam search (decoding/search.py; CPU or GPU, n-best, LM); "
                      "fast-ctc-decode: the previous decoder, kept for one release to compare (no LM)."),
    click.option("--lm", default=_DD.lm or None, metavar="FILE.arpa", type=click.Path(exists=True, dir_okay=False),
                 help="A phone n-gram LM in ARPA form (`phonerec lm`, KenLM, SRILM) fused into the search."),
    click.option("--alpha", type=ranged("alpha", float), default=_DD.alpha, show_default=True,
                 help="LM weight (with --lm)."),
    click.option("--beta", type=ranged("beta", float), default=_DD.beta, show_default=True,
                 help="Bonus per phone (with --lm)."),
    click.option("--blank-skip", type=ranged("blank_skip", float), default=_DD.blank_skip, show_default=True,
                 help="Frames whose blank probability reaches this extend no hypothesis (their blank and "
                      "repeat paths are still summed exactly); above 1: search every frame."),
]


def _beam(beam_width, threads, decoder, lm, alpha, beta, blank_skip, grid=()):
    from .inference import BeamSettings
    if lm and decoder != "torch":
        raise click.UsageError(f"--lm needs the torch decoder (--decoder {decoder} takes no language model)")
    return BeamSettings(width=beam_width, threads=threads, decoder=decoder, lm=lm or "", alpha=alpha, beta=beta,
                        blank_skip=blank_skip, grid=tuple(grid))


def _split_options(split: str, split_help: str, beam: int, results_help: str):
    """The options `predict` and `evaluate` share (defaults from DecodeConfig)."""
    options = [
        click.option("--shards", default=_DD.shards, show_default=True, help=_SHARDS_HELP),
        _weights,
        click.option("--results", default=_DD.results, show_default=True, help=results_help),
        click.option("--split", default=split, show_default=True, help=split_help),
        click.option("--beam-width", type=ranged("beam_width", int), default=beam, show_default=True, help="Beam width (0 = greedy; at most 1024)."),
        *_BEAM_OPTIONS,
        _threads,
        click.option("--workers", type=ranged("workers", int), default=_DD.workers, show_default=True, help="DataLoader workers per rank (at most 4 x this machine's cores)."),
        _device,
        _fetch_options,
    ]
    return with_options(options)


@click.command("predict")
@_split_options(_DD.predict_split, "Split to decode.", _DD.predict_beam, "Where submission.csv goes.")
@click.option("--output", default=_DD.output, show_default=True, help="File name inside --results.")
@click.option("--header", default=None, metavar="A,B",
              help="The submission's header. [default: the test split's template's (random_submission.csv or "
                   "sample_submission.csv under the split), else index,label]")
@click.option("--quiet", is_flag=True)
def predict(shards, weights, results, split, beam_width, decoder, lm, alpha, beta, blank_skip, threads, workers,
            device, output, header, quiet, **fetch):
    """Beam-decode a split (the test split) into <results>/submission.csv (index,label, or the
    header of the template the test split ships).

    One row per input utterance in the original order (sorted file names), whatever the
    shard order; under torchrun (`make predict NGPU=N`) each rank decodes its share of the
    shards and rank 0 writes the merged file.
    """
    from pathlib import Path

    from pipeline.atomic import ensure_writable

    from pipeline import manifest as mf

    from . import distributed as D
    from .inference import decode_checkpoint, submission_header, submission_rows, write_predictions, write_submission

    source = _source(fetch, workers)
    beam = _beam(beam_width, threads, decoder, lm, alpha, beta, blank_skip)

    def go():
        if D.main_rank():
            ensure_writable(results)    # before decoding the whole split, not after
        columns = submission_header(mf.load(shards, split, source.policy), header)
        ctx = D.init(device)
        try:
            m, hyps = decode_checkpoint(weights, shards, split, ctx, workers=workers, progress=not quiet,
                                        source=source, beam=beam)
            if ctx.is_main:
                rows, missing = submission_rows(m, hyps)
                out = Path(results) / output
                write_submission(out, rows, columns)
                write_predictions(Path(results) / f"predict-{split}.tsv", m, hyps)
                click.echo(f"wrote {out}: {len(rows)} rows ({m.num_utterances} decoded, {_describe(beam)}); "
                           f"ids and greedy decodes beside it in predict-{split}.tsv")
                if m.num_utterances == 0:
                    click.echo(f"warning: split {m.split} has no utterances: the submission has {len(rows)} rows",
                               err=True)
                if missing:
                    click.echo(f"warning: {len(missing)} utterance(s) were rejected by `phonerec shards` and have "
                               f"empty labels (rows {missing[:10]}...); see {shards}/rejected.tsv", err=True)
                _network_note(m, source)
        finally:
            D.shutdown(ctx)
    _run_inference(go)


@click.command("evaluate")
@_split_options(_DD.evaluate_split, "A labelled split.", _DD.evaluate_beam, "Where the per-utterance TSV goes.")
@click.option("--quiet", is_flag=True)
@click.pass_context
def evaluate(ctx, shards, weights, results, split, beam_width, decoder, lm, alpha, beta, blank_skip, threads, workers,
             device, quiet, **fetch):
    """Mean Levenshtein distance and phoneme error rate, greedy and beam, on a labelled split.

    With --lm and no --alpha/--beta, also decodes with each pair of a small grid of LM weights,
    prints their PER and scores the beam with the best pair (the one to give `predict`).
    Writes <results>/evaluate-<split>.tsv (id, reference, greedy, beam, distances) and
    <results>/evaluate-<split>.json.
    """
    from .inference import LM_GRID, evaluate_split

    given = any(ctx.get_parameter_source(p) not in (click.core.ParameterSource.DEFAULT, None) for p in ("alpha", "beta"))
    grid = LM_GRID if lm and not given and beam_width > 0 else ()
    source = _source(fetch, workers)
    beam = _beam(beam_width, threads, decoder, lm, alpha, beta, blank_skip, grid)
    m = _run_inference(lambda: evaluate_split(weights, shards, results, split, beam, device=device, workers=workers,
                                              progress=not quiet, source=source, echo=click.echo))
    if m is not None:
        _network_note(m, source)


def _describe(beam) -> str:
    """'beam width 50, torch decoder, LM phones.arpa (alpha 0.5, beta 1)'."""
    if beam.width <= 0:
        return "greedy"
    lm = f", LM {beam.lm} (alpha {beam.alpha:g}, beta {beam.beta:g})" if beam.lm else ""
    return f"beam width {beam.width}, {beam.decoder} decoder{lm}"


def _network_note(m, source) -> None:
    """Shards at a URL: one line on what this process's reads did (retries, cache hits)."""
    if m.remote:
        from .loop import network_line
        click.echo(network_line(source.totals()), err=True)


@click.command("transcribe")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@_weights
@click.option("--beam-width", type=ranged("beam_width", int), default=_DD.transcribe_beam, show_default=True, help="Beam width (0 = greedy; at most 1024).")
@with_options(_BEAM_OPTIONS)
@click.option("--arpabet", is_flag=True, help="Print ARPAbet symbols instead of the one-character codes.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="Save a posteriorgram PNG of the first file (frames x symbols, decoded symbols marked).")
@_threads
@_device
def transcribe(files, weights, beam_width, decoder, lm, alpha, beta, blank_skip, arpabet, plot, threads, device):
    """Decode raw feature files (.npy [T,15]) or recordings (.wav/.flac/.ogg, any sample rate;
    features extracted as `phonerec synth-speech` does); prints `name<TAB>labels`, as in a
    submission.

    Each file is normalized with the statistics stored in the checkpoint.
    """
    from pathlib import Path

    from pipeline.validate import UtteranceError

    from . import distributed as D
    from .inference import load_model, plot_posteriorgram, transcribe as run

    beam = _beam(beam_width, threads, decoder, lm, alpha, beta, blank_skip)

    def go():
        ctx = D.Context(device=D.init(device).device)
        loaded = load_model(weights, ctx.device)
        failed = []
        first = None
        for f in files:               # one file at a time: a bad file is reported and the others decoded
            try:
                out = run(loaded, [Path(f)], ctx.device, beam)
            except UtteranceError as exc:
                failed.append(f"cannot read features {exc}")
                if len(files) > 1:
                    click.echo(f"error: {failed[-1]}", err=True)
                continue
            path, hyp, _, _ = out[0]
            first = first or out[0]
            inv = loaded.inventory        # the checkpoint's: its outputs, symbols and codes
            click.echo(f"{path.name}\t{' '.join(inv.to_arpabet(hyp)) if arpabet else inv.to_codes(hyp)}")
        if plot and first is not None:
            path, hyp, frames, lp = first
            png = plot_posteriorgram(Path(plot), lp, hyp, frames, path.name, loaded.inventory)
            click.echo(f"posteriorgram: {png}", err=True)
        if len(files) == 1 and failed:
            raise click.ClickException(failed[0])
        if failed:
            raise click.ClickException(f"{len(failed)} of {len(files)} file(s) could not be read (listed above); "
                                       "the others were transcribed")
    _run_inference(go)


@click.command("lm")
@click.option("--shards", default=_DD.shards, show_default=True, help=_SHARDS_HELP)
@click.option("--train", "splits", default=TrainConfig().train, show_default=True,
              help="Comma-separated labelled splits whose transcripts the LM is estimated on.")
@click.option("--order", type=ranged("order", int), default=_DD.lm_order, show_default=True,
              help="n of the n-gram (the decoder holds a dense table: up to 4 for ~45 phones).")
@click.option("--out", default=None, metavar="FILE.arpa",
              help="Where the ARPA file goes.  [default: <weights>/phones-<order>gram.arpa]")
@click.option("--weights", default=_DD.weights, show_default=True, help="The default --out folder.")
@click.option("--quiet", is_flag=True)
@_fetch_options
def lm(shards, splits, order, out, weights, quiet, **fetch):
    """Estimate a phone n-gram language model (interpolated Kneser-Ney) on the training split's
    transcripts and write it as an ARPA file, for `predict`/`evaluate`/`transcribe --lm`.

    `evaluate --lm FILE` then searches a small grid of LM weights on the dev split and prints the
    best --alpha/--beta for predict.
    """
    from pathlib import Path

    from .phone_lm import build_lm

    out = out or str(Path(weights) / f"phones-{order}gram.arpa")
    source = _source(fetch, 0)
    info = _run_inference(lambda: build_lm(shards, splits, order, out, source, progress=not quiet))
    click.echo(f"wrote {info['path']}: order {order}, {info['sentences']} transcripts, {info['phones']} phones, "
               f"n-grams per order {info['ngrams']}")
COMMANDS: list = [train, predict, evaluate, transcribe, lm]
