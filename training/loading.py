"""A checkpoint ready to decode: its model, symbol inventory and normalization statistics, checked
against the shards it is to decode (loaded once per command; under torchrun rank 0 reads the file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import manifest as mf
from pipeline.errors import PhonerecError
from pipeline.manifest import Stats
from pipeline.vocab import F22, Inventory, InventoryError

from . import distributed as D
from .checkpoint import BEST, Checkpoint, CheckpointError, load_weights, model_config_of, resolve
from .model import Model, check_fits, device_memory


class CompatibilityError(PhonerecError):
    """Weights and shards (or files) that do not belong together."""


@dataclass
class Loaded:
    model: Model
    checkpoint: Checkpoint
    stats: Stats
    path: Path
    inventory: Inventory = F22          # the symbol inventory it was trained with: its outputs and codes


def checkpoint_inventory(ck: Checkpoint, path: Path) -> Inventory:
    """The checkpoint's symbol inventory, which must describe its model's outputs."""
    try:
        inv = ck.symbol_inventory()
    except InventoryError as exc:
        raise CompatibilityError(f"{path}: trained with a different vocabulary than this version reads "
                                 f"({len(ck.vocab)} symbols: {exc})") from None
    classes = ck.model_config.get("num_classes", F22.num_classes)
    if classes != inv.num_classes:
        raise CompatibilityError(f"{path}: trained with a different vocabulary ({inv.describe()}) than its "
                                 f"model's {classes} outputs; use another checkpoint or retrain")
    return inv


def load_model(weights: str | Path, device: torch.device, name: str = BEST, ctx: D.Context | None = None) -> Loaded:
    """The checkpoint's model, ready to decode. Under torchrun (`ctx`) rank 0 reads the file and
    sends it to the others: their machines need not share its disk."""
    path = resolve(weights, name)
    if ctx is not None and ctx.distributed:
        blob = D.file_from_rank0(ctx, path)
        if blob is None:
            raise CheckpointError(f"no checkpoint at {path} (on the machine of rank 0); train first (`phonerec "
                                  "train`) or point --weights at it")
        ck = Checkpoint.from_bytes(blob, path)
    else:
        ck = Checkpoint.load(path)
    inventory = checkpoint_inventory(ck, path)
    if not ck.stats:
        raise CheckpointError(f"checkpoint {path} holds no normalization statistics, so it is not a phonerec "
                              "checkpoint; use another checkpoint (e.g. best.pt) or retrain")
    stats = checkpoint_stats(ck, path)
    mcfg = model_config_of(ck, path)
    check_fits(mcfg, training=False, memory=device_memory(device), where=f"the model of {path}")
    model = Model(mcfg)
    load_weights(model, ck.model, path)
    model.to(device).eval()
    return Loaded(model=model, checkpoint=ck, stats=stats, path=path, inventory=inventory)


def checkpoint_stats(ck: Checkpoint, path: Path) -> Stats:
    """The checkpoint's normalization statistics, one per feature, finite (else one line)."""
    try:
        stats = Stats.from_json(ck.stats)
        width = ck.model_config.get("input_dim", stats.mean.shape[-1] if stats.mean.ndim else 0)
        if stats.mean.shape != (width,) or stats.std.shape != (width,) or \
                not (np.isfinite(stats.mean).all() and np.isfinite(stats.std).all() and (stats.std > 0).all()):
            raise ValueError(f"not {width} finite means and positive deviations")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: its normalization statistics are damaged "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); use another checkpoint "
                              "(e.g. best.pt) or retrain") from None
    return stats


def check_compatible(loaded: Loaded, m: mf.Manifest) -> None:
    width = loaded.model.config.input_dim
    if width != m.feature_dim:
        raise CompatibilityError(f"{loaded.path} was trained on {width} features per frame, the {m.split} shards in "
                                 f"{m.location} have {m.feature_dim}: use the model trained on this corpus")
    if not loaded.inventory.matches(m.inventory):
        raise CompatibilityError(f"{loaded.path} was trained with the symbol inventory {loaded.inventory.describe()}, "
                                 f"the {m.split} shards in {m.location} use {m.inventory.describe()}: use the model "
                                 "trained on this corpus, or rebuild the shards with its --inventory")
    want, have = loaded.stats.fingerprint, m.stats.fingerprint
    if want != have:
        raise CompatibilityError(
            f"{loaded.path} was trained on features normalized with other statistics (from {loaded.stats.splits}) "
            f"than the {m.split} shards in {m.location} (from {m.stats.splits}); use the shards the "
            "model was trained with, or retrain")
