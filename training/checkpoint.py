"""Checkpoints: written atomically, holding everything a run needs to continue at its exact step.

`Checkpoint` is the one definition of what a checkpoint holds; the trainer writes it, and the
trainer (`--resume`) and the decoders (`predict`, `evaluate`, `transcribe`) read it. On disk it
is a plain dict with one key per field.

A checkpoint is serialized in memory first and then written with one atomic write (temp file,
fsync, rename): a crash, a kill or a full disk during the write leaves the previous checkpoint
under its name intact, and a full disk is reported as a WriteError (one line on the command line)
rather than torch's opaque "PytorchStreamWriter failed writing file" error.

Checkpoints hold only plain data (dicts, lists, numbers, strings, tensors) and are read with
`torch.load(weights_only=True)`: a planted file whose pickle would import and call something
(os.system, say) is refused before anything in it runs. Checkpoints written before the RNG state
was stored as plain numbers hold numpy's RNG key array; for those (and only those) numpy's array
reconstruction is admitted too, with the numeric dtypes only (no object arrays).
"""

from __future__ import annotations

import dataclasses
import io
import math
import pickle
import random
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import atomic_path
from pipeline.errors import PhonerecError
from pipeline.limits import gigabytes, memory_bytes
from pipeline.options import check_types, known
from pipeline.vocab import Inventory

LAST, BEST = "last.pt", "best.pt"


class CheckpointError(PhonerecError):
    """A checkpoint that is missing, unreadable or does not fit the data."""


@dataclass(kw_only=True)
class Checkpoint:
    """What a checkpoint holds (field order = the on-disk dict's key order).

    Only `model` and `model_config` are needed to decode with it; a checkpoint written by
    `phonerec train` holds every field. Fields missing from an older file take these defaults."""

    model: dict                                     # the model's state_dict
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    rng: list = field(default_factory=list)         # every rank's RNG state (capture_rng)
    epoch: int = 0                                  # the data position: epoch and step within it
    step: int = 0
    global_step: int = 0
    best: float = math.inf                          # best dev distance so far
    accumulators: dict = field(default_factory=dict)       # rank 0's partial sums of the epoch
    config: dict = field(default_factory=dict)             # TrainConfig.to_dict()
    model_config: dict                                     # ModelConfig.to_dict()
    world: int = 1
    vocab: list = field(default_factory=list)              # the outputs' symbols (index 0 = the CTC blank)
    # The rest of the symbol inventory (pipeline.vocab.Inventory.to_json): the outputs' submission codes,
    # the transcripts' framing tokens and the inventory's name; checkpoints without codes are F22's.
    codes: list = field(default_factory=list)
    framing: list = field(default_factory=list)
    inventory: str = ""
    stats: dict = field(default_factory=dict)              # pipeline Stats.to_json()
    rank_steps: list = field(default_factory=list)
    rank_accumulators: list = field(default_factory=list)
    skipped_shards: list = field(default_factory=list)     # reports of the shards left out
    ctc_infeasible: int = 0
    ctc_infeasible_ids: list = field(default_factory=list)
    budget: dict = field(default_factory=dict)             # a time budget's plan and clock (training.budget)
    average: dict = field(default_factory=dict)            # the weight average (training.average), training state
    averaged: bool = False                                 # `model` holds the averaged weights (a best.pt)

    def symbol_inventory(self) -> Inventory:
        """The symbol inventory the model was trained with (InventoryError if its records disagree)."""
        return Inventory.from_json({"vocab": self.vocab, "codes": self.codes, "framing": self.framing,
                                    "inventory": self.inventory})

    def to_dict(self) -> dict:
        """The on-disk dict (not a deep copy: tensors are shared)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, state: dict, path: str | Path = "checkpoint") -> Checkpoint:
        missing = [k for k in ("model", "model_config") if k not in state]
        if missing:
            raise CheckpointError(f"cannot read checkpoint {path}: it holds no {' or '.join(missing)}, so it is not a "
                                  "phonerec checkpoint; use another checkpoint (e.g. best.pt) or retrain")
        values = known(cls, state)          # keys of other versions are dropped
        try:
            check_types(cls, values, finite=False)          # `best` is inf before any dev pass
            bad = [k for k, v in values["model"].items() if not isinstance(k, str) or not torch.is_tensor(v)]
            if bad:
                raise ValueError(f"model: {bad[0]!r} is not a named tensor")
        except ValueError as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}; it is damaged or not a phonerec "
                                  "checkpoint: use another checkpoint (e.g. best.pt) or retrain") from None
        return cls(**values)

    def save(self, path: str | Path) -> None:
        """Serialize in memory, then one atomic write (temp file, fsync, rename)."""
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(buf.getbuffer())

    @classmethod
    def load(cls, path: str | Path, map_location="cpu") -> Checkpoint:
        """Read with weights_only=True: a file whose pickle imports anything else is refused."""
        return cls.from_dict(_read(Path(path), map_location), path)

    @classmethod
    def from_bytes(cls, data: bytes, path: str | Path, map_location="cpu") -> Checkpoint:
        """A checkpoint file's bytes (read on another rank: D.file_from_rank0), loaded as load() does."""
        return cls.from_dict(_read(Path(path), map_location, data), path)


def capture_rng() -> dict:
    """This process's RNG states. Plain types and tensors only (checkpoints load with
    weights_only=True): numpy's MT19937 key array is stored as a list of ints, which restores it
    exactly."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [str(name), keys.tolist(), int(pos), int(has_gauss),
                                                      float(cached)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    # A list of plain values, or numpy's own tuple (with a uint32 array) in older checkpoints.
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate(s["python"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def remove_stale_temps(weights: str | Path) -> list[Path]:
    """Temp files of checkpoint writes that a killed run left behind (`.last.pt.tmp<pid>`)."""
    removed = []
    folder = Path(weights)
    if folder.is_dir():
        for name in (LAST, BEST, "config.json"):
            for p in folder.glob(f".{name}.tmp*"):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _numpy_array_globals() -> list:
    """What numpy arrays of plain numbers need to unpickle (old checkpoints' RNG state): the array
    reconstruction under its numpy 1 and 2 names, ndarray, dtype and the numeric dtype classes."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    dtype_classes = {type(np.dtype(c)) for c in "?bBhHiIlLqQefd"}
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"),
            (_reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *sorted(dtype_classes, key=str)]


# What torch's weights-only unpickler says when a pickle imports something it does not admit.
_GLOBAL = re.compile(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)")
_DETAIL = re.compile(r"WeightsUnpickler error: ([^\n]+)")


def check_file(path: Path, data: bytes | None = None) -> None:
    """Before reading a checkpoint (or its bytes, `data`): a regular file that fits this machine's
    memory twice (its bytes and its tensors), and, a zip archive as torch writes them, entries
    stored uncompressed whose sizes sum to no more than the file: a small file claiming GBs (a zip
    bomb) is refused from its directory, before anything is inflated."""
    if data is None:
        if not path.is_file():
            raise CheckpointError(f"no checkpoint at {path}; train first (`phonerec train`) or point --weights at it")
        size = path.stat().st_size
    else:
        size = len(data)
    if 2 * size > memory_bytes():
        raise CheckpointError(f"checkpoint {path} is {gigabytes(size)}, more than this machine's memory "
                              f"({gigabytes(memory_bytes())}) can load; use another checkpoint or a larger machine")
    try:
        with zipfile.ZipFile(path if data is None else io.BytesIO(data)) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return                          # not a zip: torch's reader says what it is (a legacy file is read as is)
    claimed = sum(e.file_size for e in entries)
    if claimed > size or any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise CheckpointError(f"checkpoint {path} claims {gigabytes(claimed)} of contents in a {gigabytes(size)} file "
                              "(compressed entries: torch writes none); it is damaged or not a phonerec checkpoint: "
                              "use another checkpoint (e.g. best.pt) or retrain")


def _read(path: Path, map_location="cpu", data: bytes | None = None) -> dict:
    """The checkpoint file's dict (or that of its bytes, `data`), loaded with weights_only=True
    (plus numeric numpy arrays), after check_file."""
    check_file(path, data)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            state = torch.load(path if data is None else io.BytesIO(data), map_location=map_location,
                               weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _GLOBAL.search(str(exc))
        if found:
            raise CheckpointError(f"checkpoint {path} refuses to load: it holds code (it imports {found.group(1)}); "
                                  "only plain checkpoints written by phonerec load") from None
        detail = _DETAIL.search(str(exc))
        msg = " ".join((detail.group(1) if detail else str(exc)).split())[:300]
        raise CheckpointError(f"cannot read checkpoint {path} (UnpicklingError: {msg}); it is damaged or not a "
                              "phonerec checkpoint: use another checkpoint (e.g. best.pt) or retrain") from None
    except Exception as exc:  # noqa: BLE001
        msg = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: {msg}); it is damaged: "
                              f"use another checkpoint (e.g. best.pt) or retrain") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: it holds a {type(state).__name__}, not a phonerec "
                              "checkpoint; use another checkpoint (e.g. best.pt) or retrain")
    return state


def resolve(weights: str | Path, name: str = BEST) -> Path:
    """`weights` may be a folder (then `name` inside it) or a checkpoint file."""
    p = Path(weights)
    return p / name if p.is_dir() or not p.suffix else p


def model_config_of(ck: Checkpoint, path: str | Path):
    """The checkpoint's ModelConfig, checked as a recipe's model settings are: a wrong type or an
    unknown key is one line naming the file."""
    from .model import ModelConfig
    try:
        return ModelConfig.from_dict(ck.model_config)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: its model config is not valid ({exc}); use another checkpoint "
                              "(e.g. best.pt) or retrain") from None


def load_weights(module: torch.nn.Module, state: dict, path: str | Path) -> None:
    """`state` into `module`: a missing, unexpected or wrongly shaped tensor is one line naming the file."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        msg = " ".join(str(exc).split())[:240]
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its model ({msg}); it is damaged: use "
                              "another checkpoint (e.g. best.pt) or retrain") from None
