"""Averaged weights: an exponential moving average of the model's parameters during training.

The recipes this task borrows from average weights before decoding (icefall's
`--use-averaged-model`, ESPnet's averaging of the best checkpoints): the average sits nearer the
middle of the basin the optimizer wanders around, and decodes better than the last step's weights,
most of all late in a short run whose learning rate has not fully annealed.

`WeightAverage` keeps a copy of the model whose parameters follow the trained ones with
decay `min(decay, (1 + n) / (10 + n))` after n updates (the warm-up keeps the first epochs' average
from being dominated by the random initialisation); buffers (BatchNorm statistics) are copied.
Every rank keeps the same average (DDP keeps the parameters equal), so the dev pass can score it
collectively. It is training state: last.pt holds it, so a resume continues it exactly.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """An EMA of `model`'s parameters; `.model` is a module to evaluate (eval mode, no grads)."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._pairs = None

    def _params(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if self._pairs is None or self._pairs[0] is not model:
            mine, theirs = list(self.model.parameters()), list(model.parameters())
            self._pairs = (model, mine, theirs)
        return self._pairs[1], self._pairs[2]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (after an optimizer step)."""
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        mine, theirs = self._params(model)
        torch._foreach_lerp_(mine, theirs, 1.0 - d)
        for b_avg, b in zip(self.model.buffers(), model.buffers()):
            b_avg.copy_(b)

    def state_dict(self) -> dict:
        """Plain data for a checkpoint: the averaged weights and the update count."""
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
