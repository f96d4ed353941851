"""`phonerec sweep`: parses the sweep's options and the trials' base recipe (every option of
`train`), checks the search space, runs the sweep (sweep/study.py) and prints where it wrote."""

from __future__ import annotations

import dataclasses

import click

from pipeline.cli_options import FieldCommand, click_options, given, make_config, model_overrides, recipe_options
from training.config import TrainConfig, train_config

from .space import base_point, load_space
from .study import SweepConfig, run_sweep


@click.command("sweep", cls=FieldCommand)
@click_options(SweepConfig)
@recipe_options
@click_options(TrainConfig)
@click.pass_context
def sweep(ctx, config_file, model_set, **params):
    """Search training options and model settings for the lowest dev PER (Optuna: a seeded TPE
    sampler and a pruner fed each epoch's dev PER).

    Each trial is `phonerec train` (the base recipe: --config and the train options below, with
    the sampled values) in its own process, for --trial-minutes; a crash or out-of-memory trial
    is recorded as failed and the sweep goes on. Rerunning the same command continues the study;
    Ctrl-C stops the running trial with its checkpoint and marks it interrupted (exit status 130).
    Writes <results>/<study>/trials.tsv and .json, best.yaml (for `train --config`), history.png,
    importances.png and parallel.png; each trial's folders are <results>/<study>/trial-NNNN and
    <weights>/<study>/trial-NNNN.
    """
    own = {f.name for f in dataclasses.fields(SweepConfig)}
    cfg = make_config(SweepConfig, {k: v for k, v in params.items() if k in own})
    train_params = {k: v for k, v in params.items() if k not in own}
    base = make_config(TrainConfig, train_params, lambda: train_config(config_file, train_params, given(ctx) - own,
                                                                       model_overrides(model_set)))
    space = load_space(cfg.space, base)
    if cfg.dry_run:
        click.echo(f"base recipe: preset {base.preset}, model {base.model or '{}'}, lr {base.lr}, max_frames "
                   f"{base.max_frames}, time budget {cfg.trial_minutes or base.time_budget:g} min, epochs {base.epochs}")
        for p in space:
            click.echo(f"  {p.describe()}")
        point, why = base_point(base, space)
        click.echo("a new study's first trial: the base recipe" if point is not None else
                   f"the base recipe is not a point of the space ({why}): no trial of it to compare with")
        return
    done = run_sweep(cfg, base, space, log=lambda m: click.echo(m, err=True), progress=base.progress)
    if done["best"]:
        click.echo(f"best recipe: {done['best']} (train it with `phonerec train --config {done['best']}`)")
    if done["interrupted"]:
        ctx.exit(130)


COMMANDS: list = [sweep]
