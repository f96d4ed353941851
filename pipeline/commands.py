"""Stage-1 click commands: `phonerec shards` (and `--verify`) and `publish`. Each parses its
config (pipeline/config.py), calls one library function and prints."""

from __future__ import annotations

import sys

import click

from .config import PublishConfig, ShardsConfig
from .cli_options import FieldCommand, click_options, make_config
from .errors import Interrupted, PhonerecError


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
            raise PhonerecError(f"{bad} problem(s); rebuild with `phonerec shards` (damaged shards are rewritten "
                                "after deleting them)")
        return
    from .build import build_shards
    from .workers import sigterm_interrupts
    try:
        with sigterm_interrupts():
            summary = build_shards(cfg, log=lambda m: click.echo(m, err=True))
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted: {cfg.shards} keeps every file already finished; rerun the same command "
                          "to finish the build") from None
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
