"""The commands' options in dataclasses: CLI flags, config files and checkpoints all use them.

`TrainConfig` holds `phonerec train`'s options (saved in every checkpoint and config.json);
`DecodeConfig` the defaults of `predict`, `evaluate` and `transcribe`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.limits import MAX_WORKERS
from pipeline.remote import MAX_MANIFEST, MIN_RATE, POLICY_OPTIONS, FetchPolicy, make_policy

from .plan import DEFAULT_MAX_FRAMES

# Caps that keep a typo from starting a thousand processes or a search that cannot fit in memory.
MAX_BEAM = 1024                                  # beam width
MAX_THREADS = 1024


@dataclass(frozen=True)
class Range:
    """The values a numeric option takes (open: the bound itself excluded)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False

    def problem(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if self.low is not None and (value < self.low or self.open_low and value == self.low):
            return f"{value} is {'not above' if self.open_low else 'below'} {self.low}"
        if self.high is not None and value > self.high:
            return f"{value} is above {self.high}"
        return None


# Every numeric option's range: the flags (commands.ranged) and recipe files (TrainConfig.from_dict) alike.
RANGES: dict[str, Range] = {
    "epochs": Range(1), "time_budget": Range(0), "seed": Range(0), "max_frames": Range(1), "max_utts": Range(1),
    "workers": Range(0, MAX_WORKERS), "lr": Range(0, open_low=True), "weight_decay": Range(0),
    "warmup": Range(0, 1), "plateau_patience": Range(0), "plateau_factor": Range(0, 1, open_low=True),
    "clip": Range(0), "time_masks": Range(0), "time_width": Range(0), "freq_masks": Range(0),
    "freq_width": Range(0), "noise_std": Range(0), "checkpoint_every": Range(0), "max_steps": Range(0),
    "max_bad_steps": Range(1), "fetch_retries": Range(0), "fetch_backoff": Range(0),
    "fetch_timeout": Range(0, open_low=True), "beam_width": Range(0, MAX_BEAM), "threads": Range(0, MAX_THREADS),
    "alpha": Range(0, 10), "beta": Range(-10, 10), "blank_skip": Range(0, open_low=True), "order": Range(1, 6),
}


def fetch_policy(opts: dict) -> FetchPolicy:
    """How shards at a URL are read, from the POLICY_OPTIONS of `opts` (ValueError for a bad value)."""
    return make_policy(**{k: opts[k] for k in POLICY_OPTIONS})


@dataclass
class TrainConfig:
    shards: str = "shards"
    weights: str = "weights"
    results: str = "results"
    train: str = "train-clean-100"     # comma-separated training splits
    dev: str = "dev-clean"             # '' for none
    epochs: int = 20                   # with a time budget: the most it may plan
    time_budget: float = 0.0           # minutes: train as many epochs as fit (0 = --epochs)
    preset: str = "default"
    model: dict = field(default_factory=dict)   # ModelConfig overrides
    seed: int = 0
    max_frames: int = DEFAULT_MAX_FRAMES   # (utterances in batch) x (longest in batch) <= this
    max_utts: int = 64
    workers: int = 2                   # DataLoader workers per rank
    lr: float = 2e-3
    weight_decay: float = 0.01
    scheduler: str = "cosine"          # cosine | onecycle | plateau | none
    warmup: float = 0.05               # fraction of all steps (cosine)
    plateau_patience: int = 20         # ReduceLROnPlateau on dev distance (the original recipe's values)
    plateau_factor: float = 0.5
    clip: float = 5.0
    # fp16 autocast on CUDA: on an H100, 7-24 % slower at 48,000-frame batches but 28 % faster for
    # `large` at 160,000 (README, Performance)
    amp: bool = False
    spec_augment: bool = True
    time_masks: int = 2
    time_width: int = 40
    freq_masks: int = 2
    freq_width: int = 3
    noise_std: float = 0.0
    checkpoint_every: int = 500        # steps between mid-epoch `last` checkpoints (0 = epoch ends only)
    max_steps: int = 0                 # cap on steps per epoch (0 = whole epoch); for benchmarks
    max_bad_steps: int = 20            # consecutive non-finite losses before the run stops
    # Check every shard's sha256 first and train without the damaged ones instead of stopping.
    skip_bad_shards: bool = False
    resume: bool = False
    device: str = "auto"
    tune_host: bool = True             # speed-ups detected on this machine (training/host.py)
    progress: bool = True
    tensorboard: bool = False          # also write metrics.jsonl's scalars as TensorBoard events in results/
    # Shards at a URL (pipeline/remote.py): tries after the first on transient errors, the first
    # backoff (doubled each time), the network timeout, and a local cache of verified shards.
    fetch_retries: int = FetchPolicy.retries
    fetch_backoff: float = FetchPolicy.backoff
    fetch_timeout: float = FetchPolicy.timeout
    fetch_min_rate: str = MIN_RATE     # bytes/s: a slower fetch is stalled (FetchPolicy.deadline)
    max_manifest_size: str = MAX_MANIFEST  # a larger manifest or index.json is refused
    expect_digest: str = ""            # the published index.json's sha256 ('' = not pinned)
    shard_cache: str = ""              # folder ('' = no cache)
    shard_cache_size: str = "0"        # evict above this, e.g. 20G ('0' = no limit)

    # Options that change the data order or the model: a resumed run keeps the checkpoint's values.
    PINNED = ("seed", "max_frames", "max_utts", "preset", "model", "train", "workers", "time_budget")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fetch_policy(self) -> FetchPolicy:
        return fetch_policy(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from a recipe and flags: unknown keys and out-of-range numbers are ValueErrors."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}")
        for key, value in d.items():
            problem = RANGES[key].problem(value) if key in RANGES else None
            if problem:
                raise ValueError(f"{key} (--{key.replace('_', '-')}): {problem}")
        return cls(**d)

    @classmethod
    def from_checkpoint(cls, d: dict) -> TrainConfig:
        """The config a checkpoint was trained with. Keys this version does not know (options other
        versions had, e.g. a retired test-only one in checkpoints written before it went) are
        dropped: what a resume takes from it are the PINNED options."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def pinned_differences(self, other: TrainConfig) -> list[str]:
        """The PINNED options on which `other` differs from this config."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in self.PINNED if mine[k] != theirs[k]]


@dataclass
class DecodeConfig:
    """Defaults of the decoding commands (`predict`, `evaluate`, `transcribe`)."""

    shards: str = "shards"
    weights: str = "weights"           # a folder (best.pt is used) or a checkpoint file
    results: str = "results"
    predict_split: str = "test-clean"
    evaluate_split: str = "dev-clean"
    predict_beam: int = 50             # beam widths (0 = greedy)
    evaluate_beam: int = 20
    transcribe_beam: int = 50
    threads: int = 0                   # beam-search threads per rank (0 = CPUs / ranks on this machine)
    decoder: str = "torch"             # torch (decoding/search.py) | fast-ctc-decode (the previous one, optional)
    lm: str = ""                       # an ARPA phone LM (`phonerec lm`, KenLM, SRILM); '' for none
    alpha: float = 0.5                 # LM weight (shallow fusion) ...
    beta: float = 2.0                  # ... and bonus per phone (the demo model's best); evaluate searches a grid
    blank_skip: float = 0.999          # frames with P(blank) >= this extend nothing (> 1: search every frame)
    lm_order: int = 4                  # `phonerec lm`
    workers: int = 2                   # DataLoader workers per rank
    device: str = "auto"
    output: str = "submission.csv"     # file name inside --results


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON recipe: a mapping of TrainConfig keys."""
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml
        data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}
