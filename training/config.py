"""Stage 2's options, declared once each (pipeline/options.py turns them into flags): CLI flags,
recipe files and checkpoints all use these dataclasses.

`TrainConfig` holds `phonerec train`'s options (saved in every checkpoint and config.json);
`PredictConfig`, `EvaluateConfig`, `TranscribeConfig` and `LMConfig` the decoding commands'.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from decoding.search import SearchOptions
from pipeline.reading import CacheConfig, progress_field
from pipeline.errors import PhonerecError
from pipeline.limits import MAX_WORKERS
from pipeline.options import Options, Range, from_dict, known, option, redefault
from pipeline.strict import read_document

from .plan import DEFAULT_MAX_FRAMES

# Caps that keep a typo from starting a thousand processes or a search that cannot fit in memory.
MAX_BEAM = 1024                                  # beam width
MAX_THREADS = 1024
MAX_BUDGET_MINUTES = 525_600                     # a year: a larger --time-budget is a typo



def shards_field():
    """--shards of every stage-2 reader."""
    return option("shards", help="Folder written by `phonerec shards`, or the URL it was published to (http(s)://, "
                                 "s3://, gs://, file://; `phonerec publish`).")


def workers_field():
    return option(2, range=Range(0, MAX_WORKERS),
                  help="DataLoader workers per rank (0 = in-process; at most 4 x this machine's cores).")


def device_field():
    return option("auto", choices=("auto", "cpu", "cuda"), help="Where the model runs (auto: cuda where available).")


def _presets() -> tuple[str, ...]:
    from .model import PRESETS            # torch: read when first needed, not at `phonerec --help`
    return tuple(PRESETS)


def _preset_help() -> str:
    from .model import preset_help
    return preset_help()


@dataclass
class TrainConfig(CacheConfig):
    """`phonerec train`: saved in every checkpoint; a resume keeps the PINNED ones."""

    shards: str = shards_field()
    weights: str = option("weights", help="Checkpoint folder (last.pt, best.pt, config.json).")
    results: str = option("results", help="Folder for metrics.jsonl and curves.png.")
    train: str = option("train-clean-100", help="Comma-separated training splits.")
    dev: str = option("dev-clean", help="Dev split for per-epoch validation ('' for none).")
    epochs: int = option(20, range=Range(1), help="Epochs to train (with --time-budget: the most it may plan).")
    time_budget: float = option(0.0, range=Range(0, MAX_BUDGET_MINUTES), metavar="MINUTES",
                                help="Train as many epochs as fit in this many minutes, planned from the first "
                                     "steps' speed, the learning-rate schedule spanning them (0 = --epochs).")
    preset: str = option("default", choices=_presets, help=_preset_help)
    model: dict = option(factory=dict, cli=False, help="ModelConfig overrides (--set KEY=VALUE).")
    seed: int = option(0, range=Range(0), help="Fixes data order, initialisation and augmentation.")
    max_frames: int = option(DEFAULT_MAX_FRAMES, range=Range(1),
                             help="Frame budget per batch: utterances x longest utterance <= this.")
    max_utts: int = option(64, range=Range(1), help="At most this many utterances per batch.")
    workers: int = workers_field()
    lr: float = option(2e-3, range=Range(0, open_low=True), help="Peak learning rate (AdamW).")
    weight_decay: float = option(0.01, range=Range(0), help="AdamW's decoupled weight decay.")
    scheduler: str = option("cosine", choices=("cosine", "onecycle", "plateau", "none"),
                            help="cosine: warm-up then cosine per step; plateau: ReduceLROnPlateau on dev distance.")
    warmup: float = option(0.05, range=Range(0, 1), help="Warm-up fraction of all steps (cosine).")
    # ReduceLROnPlateau on dev distance (the original recipe's values)
    plateau_patience: int = option(20, range=Range(0), help="Epochs without a better dev distance before the lr "
                                                            "falls (plateau).")
    plateau_factor: float = option(0.5, range=Range(0, 1, open_low=True), help="What the lr is multiplied by "
                                                                               "then (plateau).")
    clip: float = option(5.0, range=Range(0), help="Gradient-norm clipping (0 = off).")
    # fp16 autocast on CUDA: on an H100, 7-24 % slower at 48,000-frame batches but 28 % faster for
    # `large` at 160,000 (docs/results.md)
    amp: bool = option(False, flag="--amp/--no-amp", help="Mixed precision (fp16 autocast; CUDA only).")
    spec_augment: bool = option(True, flag="--spec-augment/--no-spec-augment",
                                help="Time and feature masking on training batches.")
    time_masks: int = option(2, range=Range(0), help="SpecAugment: time masks per utterance.")
    time_width: int = option(40, range=Range(0), help="SpecAugment: widest time mask, in frames.")
    freq_masks: int = option(2, range=Range(0), help="SpecAugment: frequency masks per utterance.")
    freq_width: int = option(3, range=Range(0), help="SpecAugment: widest frequency mask, in features.")
    noise_std: float = option(0.0, range=Range(0), help="Gaussian input noise (0 = off).")
    speed_perturb: float = option(0.0, range=Range(0, 0.5), metavar="CHANGE",
                                  help="Speed perturbation: each training utterance's frames resampled to a speed "
                                       "uniform in 1 +- CHANGE (e.g. 0.1; 0 = off).")
    average: float = option(0.999, range=Range(0, 1, open_high=True), metavar="DECAY",
                            help="Keep an exponential moving average of the weights with this decay (0 = off); "
                                 "each epoch's dev pass scores both and best.pt holds whichever decodes better.")
    tune_decoding: bool = option(True, flag="--tune-decoding/--no-tune-decoding",
                                 help="After training: estimate a phone n-gram LM on the training transcripts, "
                                      "choose its weights on the dev split and record the choice in "
                                      "<weights>/decode.json, which predict, evaluate and transcribe then use.")
    lm_order: int = option(4, range=Range(1, 6), help="The n of the phone n-gram LM estimated after training.")
    checkpoint_every: int = option(500, range=Range(0),
                                   help="Also write weights/last.pt every N steps (0 = at epoch ends only).")
    max_steps: int = option(0, range=Range(0), help="Cap on steps per epoch (0 = all).")
    max_bad_steps: int = option(20, range=Range(1), help="Consecutive non-finite losses before the run stops.")
    skip_bad_shards: bool = option(False, help="Check every shard's sha256 first and train without the damaged ones "
                                               "(reported in the log, metrics.jsonl and the checkpoint) instead of "
                                               "stopping.")
    resume: bool = option(False, help="Continue from weights/last.pt at its exact step.")
    device: str = device_field()
    tune_host: bool = option(True, flag="--tune-host/--no-tune-host",
                             help="Speed-ups detected on this machine (glibc: malloc keeps freed memory between "
                                  "steps); results do not depend on them.")
    tensorboard: bool = option(False, help="Also write the scalars of metrics.jsonl as TensorBoard events in "
                                           "--results (needs `pip install -e '.[tensorboard]'`).")
    progress: bool = progress_field()

    # Options that change the data order or the model: a resumed run keeps the checkpoint's values.
    PINNED = ("seed", "max_frames", "max_utts", "preset", "model", "train", "workers", "time_budget", "average")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from a recipe and flags: unknown keys and out-of-range numbers are ValueErrors."""
        return from_dict(cls, d, "config")

    @classmethod
    def from_checkpoint(cls, d: dict) -> TrainConfig:
        """The config a checkpoint was trained with, checked as a recipe is (a ValueError naming
        the value). Keys this version does not know (options other versions had, e.g. a retired
        test-only one in checkpoints written before it went) are dropped: what a resume takes from
        it are the PINNED options. Its --workers may exceed this machine's cap (valid where it was
        trained; the plan is pinned to it): only its type and sign are checked (the loader bounds
        its own memory, training/data.py make_ring)."""
        if not isinstance(d, dict):
            raise ValueError(f"its config is a {type(d).__name__}, not a mapping")
        values = known(cls, d)
        workers = values.get("workers", 0)
        if isinstance(workers, int) and not isinstance(workers, bool) and workers > MAX_WORKERS:
            values["workers"] = MAX_WORKERS
        cfg = from_dict(cls, values, "config")
        cfg.workers = workers
        return cfg

    def pinned_differences(self, other: TrainConfig) -> list[str]:
        """The PINNED options on which `other` differs from this config."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in self.PINNED if mine[k] != theirs[k]]


@dataclass
class SearchConfig(Options):
    """How a decoding command searches: `transcribe`'s options, and predict's and evaluate's."""

    weights: str = option("weights", help="Checkpoint folder (uses best.pt) or a checkpoint file.")
    beam_width: int = option(SearchOptions.beam_width, range=Range(0, MAX_BEAM),
                             help=f"Beam width (0 = greedy; at most {MAX_BEAM}).")
    lm: str = option("", metavar="FILE.arpa", path="existing-file",
                     help="A phone n-gram LM in ARPA form (`phonerec lm`, KenLM, SRILM) fused into the search. "
                          "[default: the one <weights>/decode.json records, chosen on dev after training]")
    alpha: float | None = option(None, range=Range(0, 10), help="LM weight. [default: decode.json's]")
    beta: float | None = option(None, range=Range(-10, 10), help="Bonus per phone with the LM. [default: decode.json's]")
    no_lm: bool = option(False, help="Decode without a language model, whatever decode.json says.")
    blank_skip: float = option(SearchOptions.blank_skip, range=Range(0, open_low=True),
                               help="Frames whose blank probability reaches this extend no hypothesis (their blank "
                                    "and repeat paths are still summed exactly); above 1: search every frame.")
    threads: int = option(0, range=Range(0, MAX_THREADS),
                          help="Beam-search threads per rank (0 = CPUs / ranks on this machine).")
    device: str = device_field()
    search_device: str = option("cpu", choices=("cpu", "cuda"),
                                help="Where the beam search runs: cpu (on --threads cores, the model staying on the "
                                     "GPU), or cuda (opt in: the search on the model's GPU; docs/results.md).")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lm and self.no_lm:
            raise ValueError("--lm and --no-lm contradict each other: give one")


@dataclass
class TranscribeConfig(SearchConfig):
    """`phonerec transcribe FILES...`."""

    arpabet: bool = option(False, help="Print ARPAbet symbols instead of the one-character codes.")
    plot: str = option("", path="file", help="Save a posteriorgram PNG of the first file (frames x symbols, decoded symbols "
                                "marked).")


@dataclass
class SplitConfig(SearchConfig, CacheConfig):
    """What `predict` and `evaluate` share: a split of the shards, decoded by every rank."""

    shards: str = shards_field()
    results: str = option("results", help="Where the outputs go.")
    split: str = option("test-clean", help="Split to decode.")
    workers: int = workers_field()
    progress: bool = progress_field()


@dataclass
class PredictConfig(SplitConfig):
    """`phonerec predict`: a split into <results>/submission.csv."""

    results: str = redefault(SplitConfig, "results", "results", help="Where submission.csv goes.")
    output: str = option("submission.csv", help="File name inside --results (not a path, not another output's "
                                                "name such as predict-<split>.tsv).")
    header: str = option("", metavar="A,B",
                         help="The submission's header. [default: the test split's template's (random_submission.csv "
                              "or sample_submission.csv under the split), else index,label]")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_output_name(self.output)
        if self.header and len([h for h in self.header.split(",") if h.strip()]) != SUBMISSION_COLUMNS:
            raise ValueError(f"--header {self.header!r}: the submission has {SUBMISSION_COLUMNS} columns (index, "
                             "labels): give two comma-separated names, e.g. --header id,label")


SUBMISSION_COLUMNS = 2
# What the commands write into --results beside a submission (training/metrics.py, inference.py,
# tensorboard.py): a submission named like one of them would overwrite it, or be overwritten.
RESULT_NAMES = re.compile(r"metrics\.jsonl|curves\.png|(.+\.)?predict-.+\.(tsv|json)|evaluate-.+\.(tsv|json|png)"
                          r"|events\.out\.tfevents\..*")


def check_output_name(name: str) -> None:
    """predict's --output: a plain file name inside --results (where the user sees it named) that
    no other output of the commands has. ValueError (a usage error) otherwise."""
    if not name.strip():
        raise ValueError("--output is empty: give a file name inside --results, e.g. submission.csv")
    if "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"--output {name!r}: a file name inside --results, not a path; choose the folder with "
                         "--results")
    if name.startswith("."):
        raise ValueError(f"--output {name!r}: a hidden name (the temp files and the lock are hidden); choose a "
                         "visible one, e.g. submission.csv")
    if RESULT_NAMES.fullmatch(name):
        raise ValueError(f"--output {name}: another output of predict, evaluate or train has that name in "
                         "--results; choose another, e.g. submission-2.csv")


@dataclass
class EvaluateConfig(SplitConfig):
    """`phonerec evaluate`: distances and PER on a labelled split."""

    results: str = redefault(SplitConfig, "results", "results", help="Where the per-utterance TSV goes.")
    split: str = redefault(SplitConfig, "split", "dev-clean", help="A labelled split.")
    tune: bool = option(False, help="Choose the LM weights on this split (the beam without the LM and with each "
                                    "--alphas x --betas pair, the grid grown past an edge its best pair sits on) and "
                                    "record them in <weights>/decode.json; without --lm, an LM is estimated on the "
                                    "checkpoint's training splits first. `train` does this after training.")
    alphas: str = option("0.25,0.5,0.75,1", metavar="A,B,..", help="LM weights to try (--tune).")
    betas: str = option("0,1,2,3", metavar="A,B,..", help="Bonuses per phone to try (--tune).")
    lm_order: int = option(4, range=Range(1, 6), help="The n of the LM --tune estimates (without --lm).")
    json: bool = option(False, help="Print the figures as JSON (what evaluate-<split>.json holds) instead of text.")


@dataclass
class LMConfig(CacheConfig):
    """`phonerec lm`: a phone n-gram LM from the training transcripts."""

    shards: str = shards_field()
    train: str = option("train-clean-100",
                        help="Comma-separated labelled splits whose transcripts the LM is estimated on.")
    order: int = option(4, range=Range(1, 6),
                        help="n of the n-gram (the decoder holds a dense table: up to 4 for ~45 phones).")
    out: str = option("", metavar="FILE.arpa", path="file", help="Where the ARPA file goes.  [default: "
                                                    "<weights>/phones-<order>gram.arpa]")
    weights: str = option("weights", help="The default --out folder.")
    progress: bool = progress_field()

    def out_path(self) -> Path:
        return Path(self.out or Path(self.weights) / f"phones-{self.order}gram.arpa")


def read_config_file(path: str | Path) -> dict:
    """A YAML or JSON recipe: a mapping of TrainConfig keys, read strictly (pipeline/strict.py)."""
    data = read_document(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def train_config(recipe: str | Path | None, flags: dict, given: set[str], model: dict) -> TrainConfig:
    """A recipe file's values, overridden by the flags given on the command line (`given`; the
    others fill only what the recipe leaves out); `model` (--set) overrides single model settings.
    Every value is checked here, the model settings too (types, and the preset they apply to), so a
    wrong one is one line naming the recipe before any work."""
    values = read_config_file(recipe) if recipe else {}
    if "train_splits" in values:
        values["train"] = values.pop("train_splits")
    for key, val in flags.items():
        if key in given or key not in values:
            values[key] = val
    if model:
        values["model"] = {**values["model"], **model} if isinstance(values.get("model"), dict) else model
    values.setdefault("model", {})
    try:
        cfg = TrainConfig.from_dict(values)
        from .model import check_fits, preset_config
        check_fits(preset_config(cfg.preset, **cfg.model), training=True, frames=cfg.max_frames,
                   where=f"the model ({cfg.preset} with {cfg.model})" if cfg.model else f"the model ({cfg.preset})")
    except (ValueError, PhonerecError) as exc:          # PhonerecError: a model too large for this machine
        raise ValueError(f"{recipe}: {exc}" if recipe else str(exc)) from None
    return cfg
