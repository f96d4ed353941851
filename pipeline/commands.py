"""Stage-1 click commands: `phonerec shards` (and `--verify`) and `publish`. Each parses its
config (pipeline/config.py), calls one library function and prints."""

from __future__ import annotations

import dataclasses
import sys

import click

from .config import FetchConfig, PublishConfig, ShardsConfig
from .cli_options import FieldCommand, click_options, config_of


def make_config(cls, params: dict):
    """The command's config; a bad value (a size, a digest) is a usage error, before any work."""
    try:
        return usable(config_of(cls, params))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def usable(cfg):
    """`cfg`, once its fetch options make a FetchPolicy (a bad size or digest: usage error) and no
    location holds a password (refused before anything prints or reads it: a usage error)."""
    from .remote import FetchError, refuse_credentials
    for f in dataclasses.fields(cfg):
        try:
            refuse_credentials(getattr(cfg, f.name), "--" + f.name.replace("_", "-"))
        except FetchError as exc:
            raise click.UsageError(str(exc)) from None
    if isinstance(cfg, FetchConfig):
        try:
            cfg.fetch_policy()
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    return cfg


@click.command("shards", cls=FieldCommand)
@click_options(ShardsConfig)
def shards(**params):
    """Raw corpus -> zarr stores -> normalized, length-sorted WebDataset shards.

    Rebuilds only what changed since the last run and finishes an interrupted run.
    Rejected utterances are listed with file and reason in <shards>/rejected.tsv.
    """
    cfg = make_config(ShardsConfig, params)
    if cfg.verify:
        from .verify import problems_report, verify_shards
        text, bad = problems_report(verify_shards(cfg))
        click.echo(text)
        if bad:
            raise click.ClickException(f"{bad} problem(s); rebuild with `phonerec shards` "
                                       "(damaged shards are rewritten after deleting them)")
        return
    from .build import build_shards
    from .workers import sigterm_interrupts
    try:
        with sigterm_interrupts():
            summary = build_shards(cfg, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted: {cfg.shards} keeps every file already finished; rerun the same command to "
                   "finish the build", err=True)
        sys.exit(130)
    text, notes = summary.report(cfg.shards)
    click.echo(text)
    for line in notes:
        click.echo(line, err=True)
    sys.stdout.flush()


@click.command("publish", cls=FieldCommand)
@click_options(PublishConfig)
def publish(**params):
    """Copy built shards to a URL: old manifests removed first, shards, then manifests last.

    A reader (train, predict, evaluate, shards --verify with --shards URL) therefore never sees
    a manifest whose shards are not all there. The zarr stores are not copied.
    """
    from .publish import publish as run
    cfg = make_config(PublishConfig, params)
    done = run(cfg.shards, cfg.to, list(cfg.split) or None, progress=cfg.progress,
               log=lambda m: click.echo(m, err=True))
    click.echo(f"index digest: sha256 {done.digest}")
    click.echo(f"check it with: phonerec shards --verify --shards {cfg.to}")
    click.echo(f"readers can pin it: --shards '{cfg.to}#sha256={done.digest}' (or --expect-digest {done.digest})")


COMMANDS = [shards, publish]
