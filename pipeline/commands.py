"""Stage-1 click command: `phonerec shards` (and `--verify`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .limits import MAX_WORKERS
from .remote import MAX_MANIFEST, MIN_RATE, FetchPolicy

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)
_P = FetchPolicy()

# How shards at a URL are read (pipeline/remote.py): `shards --verify` and stage 2's readers.
FETCH_OPTIONS = [
    click.option("--fetch-retries", default=_P.retries, show_default=True, type=click.IntRange(min=0),
                 help="Shards at a URL: tries after the first on a transient error (5xx, reset, timeout)."),
    click.option("--fetch-backoff", default=_P.backoff, show_default=True, type=click.FloatRange(min=0),
                 help="Seconds before the first retry; doubled each time (at most 8 s)."),
    click.option("--fetch-timeout", default=_P.timeout, show_default=True, type=click.FloatRange(min=0, min_open=True),
                 help="Seconds to connect and between reads."),
    click.option("--fetch-min-rate", default=MIN_RATE, show_default=True, metavar="SIZE",
                 help="Bytes per second: a fetch that takes longer than --fetch-timeout + size / this is stalled, "
                      "and retried like a 5xx."),
    click.option("--max-manifest-size", default=MAX_MANIFEST, show_default=True, metavar="SIZE",
                 help="Refuse a manifest or index.json larger than this (the largest real one is about 15 MB)."),
    click.option("--expect-digest", default="", metavar="SHA256",
                 help="Require the published index.json to have this sha256 (what `phonerec publish` printed; "
                      "also --shards URL#sha256=...): then every manifest and shard must be what was published."),
]


def fetch_policy(values: dict):
    """The FetchPolicy of FETCH_OPTIONS' values (popped from `values`); a bad one is a usage error."""
    from .remote import POLICY_OPTIONS, make_policy
    try:
        return make_policy(**{k: values.pop(k) for k in POLICY_OPTIONS if k in values})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def with_options(options):
    """A decorator applying a list of click options in the order they are listed (stage 2 uses it too)."""
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


@click.command("shards")
@click.option("--data", type=click.Path(path_type=Path), default="data", show_default=True,
              help="Raw corpus root: <data>/<split>/mfcc/*.npy and transcript/[raw/]*.npy.")
@click.option("--shards", "shards_dir", default="shards", show_default=True,
              help="Output folder for stores, statistics, shards and manifests (with --verify also a URL: "
                   "http(s)://, s3://, gs://, file://).")
@click.option("--train", default="train-clean-100", show_default=True,
              help="Comma-separated training splits (statistics come from these only).")
@click.option("--dev", default="dev-clean", show_default=True, help="Comma-separated dev splits ('' for none).")
@click.option("--test", default="test-clean", show_default=True, help="Comma-separated test splits ('' for none).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Seed of the tie-breaking order within equal lengths.")
@click.option("--shard-size-mb", default=16.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Target shard size in MB.")
@click.option("--min-shards", default=8, show_default=True, type=click.IntRange(min=1),
              help="At least this many shards per split (fewer only if the split has fewer utterances), "
                   "so ranks x workers all get data.")
@click.option("--feature-dim", default=0, show_default=True, type=click.IntRange(min=0),
              help="Features per frame (0 = the width nearly all training files share; files of another "
                   "width are rejected, naming both).")
@click.option("--inventory", default="f22", show_default=True, metavar="NAME|FILE.tsv",
              help="The symbol inventory transcripts are encoded with and models output: f22 (43 outputs, "
                   "[SOS]/[EOS] among them), s23 or s24 (41: the same without [SOS]/[EOS]), or a TSV file of "
                   "`symbol<TAB>code` lines (README: Raw layout). Recorded in the manifests: train, predict "
                   "and transcribe follow it.")
@click.option("--cmn", is_flag=True, help="Subtract each utterance's own mean before global normalization.")
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, type=click.IntRange(1, MAX_WORKERS),
              help=f"Reader/writer processes (at most 4 x this machine's cores: {MAX_WORKERS}).")
@click.option("--strict", is_flag=True, help="Fail on the first rejected utterance instead of reporting it.")
@click.option("--verify", "verify_only", is_flag=True,
              help="Only verify existing shards: sha256, counts, members, every input accounted for.")
@with_options(FETCH_OPTIONS)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def shards(data, shards_dir, train, dev, test, seed, shard_size_mb, min_shards, feature_dim, inventory, cmn, workers,
           strict, verify_only, quiet, **fetch):
    """Raw corpus -> zarr stores -> normalized, length-sorted WebDataset shards.

    Rebuilds only what changed since the last run and finishes an interrupted run.
    Rejected utterances are listed with file and reason in <shards>/rejected.tsv.
    """
    from .remote import is_url
    from .shards import ShardOptions

    if not is_url(shards_dir):
        shards_dir = Path(shards_dir)
    elif not verify_only:
        raise click.ClickException(f"--shards {shards_dir}: shards are built in a local folder; copy them to a URL "
                                   "with `phonerec publish` (a URL works for --verify, train, predict and evaluate)")
    if verify_only:
        from .verify import verify
        names = [n for n in ",".join([train, dev, test]).split(",") if n]
        from .manifest import available_splits
        policy = fetch_policy(fetch)
        have = available_splits(shards_dir, policy)  # at a URL: its index.json (`phonerec publish`)
        if not have:
            raise click.ClickException(f"no manifests under {shards_dir}: run `phonerec shards` first")
        results = verify(shards_dir, [n for n in names if n in have] or have, data if data.is_dir() else None,
                         policy)
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
    from .vocab import load_inventory
    inventory = load_inventory(inventory)       # before any work: a bad TSV is one line
    summary = build(data, shards_dir, train=train, dev=dev, test=test,
                    options=ShardOptions(seed=seed, target_mb=shard_size_mb, min_shards=min_shards),
                    workers=workers, cmn=cmn, strict=strict, progress=not quiet,
                    log=lambda m: click.echo(m, err=True), feature_dim=feature_dim or None, inventory=inventory)
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


@click.command("publish")
@click.option("--shards", "shards_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default="shards", show_default=True, help="The shards folder `phonerec shards` built.")
@click.option("--to", "url", required=True, metavar="URL",
              help="Where readers will stream from: s3://bucket/path, gs://bucket/path, file:///path or a "
                   "folder (served over HTTP by any web server).")
@click.option("--split", "splits", multiple=True, help="Only these splits (default: every split with a manifest).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def publish(shards_dir, url, splits, quiet):
    """Copy built shards to a URL: old manifests removed first, shards, then manifests last.

    A reader (train, predict, evaluate, shards --verify with --shards URL) therefore never sees
    a manifest whose shards are not all there. The zarr stores are not copied.
    """
    from .publish import publish as run
    done = run(shards_dir, url, list(splits) or None, progress=not quiet, log=lambda m: click.echo(m, err=True))
    click.echo(f"index digest: sha256 {done.digest}")
    click.echo(f"check it with: phonerec shards --verify --shards {url}")
    click.echo(f"readers can pin it: --shards '{url}#sha256={done.digest}' (or --expect-digest {done.digest})")


COMMANDS = [shards, publish]
