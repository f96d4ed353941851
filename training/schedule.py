"""The learning-rate schedule: the schedulers `--scheduler` names, and the one way to change a
schedule's length (`set_total`), which a time budget's plan uses (training/budget.py)."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig


class Cosine:
    """Linear warm-up over a fraction of all steps, then a cosine down to 2 % at the last one.
    A class, not a closure, so that LambdaLR's state_dict keeps `total`: a time budget's plan
    (training/budget.py) changes it after the first steps."""

    def __init__(self, total: int, warmup: float):
        self.total, self.warmup = total, warmup

    def __call__(self, step: int) -> float:
        warm = max(1, int(self.warmup * self.total))
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, self.total - warm))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * p))


def make_scheduler(cfg: TrainConfig, opt, total_steps: int):
    """`--scheduler`'s scheduler over `total_steps` steps (None for "none"); stepped every step,
    except plateau (every epoch, on the dev distance)."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, Cosine(total_steps, cfg.warmup))
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total_steps, 2))
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", patience=cfg.plateau_patience,
                                                          factor=cfg.plateau_factor)
    if cfg.scheduler == "none":
        return None
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}: cosine, onecycle, plateau or none")


def set_total(sched, total_steps: int) -> None:
    """Make a cosine schedule end with step `total_steps` (its warm-up a fraction of them); the
    other schedules keep theirs (a time budget needs cosine: training.train refuses onecycle)."""
    lambdas = getattr(sched, "lr_lambdas", None)
    if lambdas and isinstance(lambdas[0], Cosine):
        lambdas[0].total = total_steps
