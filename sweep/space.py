"""The search space: a YAML mapping of training options and model settings (named as `--set`
names them) to ranges, checked against the options' declared ranges before any trial runs.

    lr: {type: float, low: 0.0005, high: 0.005, log: true}
    lstm_layers: {type: int, low: 1, high: 3}
    conv_channels: {type: categorical, choices: [[128, 128], [192, 192]]}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PhonerecError
from training.config import TrainConfig

# Options a trial may not vary: where it reads and writes, and the sweep's own business.
NOT_SEARCHED = ("shards", "weights", "results", "resume", "progress", "model", "time_budget", "tune_decoding",
                "tensorboard", "device", "dev", "train")
# ModelConfig fields the shards decide.
FROM_SHARDS = ("input_dim", "num_classes")
TYPES = ("float", "int", "categorical")


class SpaceError(PhonerecError):
    """What is wrong with a search space: one line per problem (`problems`)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        self.details = tuple(problems[:-1])           # one line each, above the message (the last one)
        super().__init__(problems[-1])


@dataclass
class Param:
    """One dimension: a training option (`model` False) or a model setting."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: list | None = None
    model: bool = False

    def describe(self) -> str:
        where = "model setting" if self.model else "option"
        if self.type == "categorical":
            return f"{self.name} ({where}): one of {', '.join(map(str, self.labels()))}"
        return f"{self.name} ({where}): {self.type} in [{self.low}, {self.high}]{', log scale' if self.log else ''}"

    def distribution(self):
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )
        if self.type == "float":
            return FloatDistribution(float(self.low), float(self.high), log=self.log)
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log)
        # Optuna's categorical choices are scalars: a list value (conv_channels) is stored as its YAML text
        return CategoricalDistribution(self.labels())

    def labels(self) -> list:
        """The categorical choices as Optuna stores them (lists become their YAML text)."""
        import yaml
        return [yaml.safe_dump(c, default_flow_style=True).strip() if isinstance(c, (list, dict)) else c
                for c in self.choices]

    def value(self, sampled):
        """The option's value for what Optuna sampled."""
        if self.type == "categorical":
            return self.choices[self.labels().index(sampled)]
        return int(sampled) if self.type == "int" else float(sampled)


def load_space(path: str | Path, base: TrainConfig) -> list[Param]:
    """The space of `path`, every range checked against `base` (the trials' recipe); a
    SpaceError listing every problem, each naming the file and the key."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SpaceError([f"{path}: cannot read the search space: {' '.join(str(exc).split())}"]) from None
    if not isinstance(data, dict) or not data:
        raise SpaceError([f"{path}: a search space is a mapping of option names to ranges, e.g. "
                          "lr: {type: float, low: 0.0005, high: 0.005, log: true}"])
    params, problems = [], []
    for key, spec in data.items():
        try:
            params.append(_param(str(key), spec, base))
        except ValueError as exc:
            problems.append(f"{path}: {key}: {exc}")
    if problems:
        raise SpaceError(problems)
    return params


def _param(key: str, spec, base: TrainConfig) -> Param:
    name = key.replace("-", "_")
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model_fields = _model_fields()
    if name in NOT_SEARCHED or name in FROM_SHARDS:
        raise ValueError("a sweep does not vary this option (it is the base recipe's or the sweep's own)")
    if name not in train_fields and name not in model_fields:
        raise ValueError(f"not an option of `phonerec train` nor a model setting; options: "
                         f"{', '.join(sorted(set(train_fields) - set(NOT_SEARCHED)))}; model settings: "
                         f"{', '.join(sorted(set(model_fields) - set(FROM_SHARDS)))}")
    p = _shape(name, spec, model=name not in train_fields)
    default = train_fields[name].default if not p.model else model_fields[name]
    _check_type(p, default)
    values = p.choices if p.type == "categorical" else [p.low, p.high]
    for v in values:
        problem = _model_problem(base, name, v) if p.model else _train_problem(base, name, v)
        if problem:
            raise ValueError(f"{v!r} is outside the option's range: {problem}")
    return p


def _shape(name: str, spec, model: bool) -> Param:
    """The range's own form: its type, bounds or choices."""
    if not isinstance(spec, dict):
        raise ValueError("expected {type: float|int, low: L, high: H[, log: true]} or {type: categorical, choices: "
                         "[...]}")
    extra = set(spec) - {"type", "low", "high", "log", "choices"}
    if extra:
        raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, extra)))}: type, low, high, log, choices")
    kind = spec.get("type")
    if kind not in TYPES:
        raise ValueError(f"type {kind!r} is not one of {', '.join(TYPES)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or set(spec) - {"type", "choices"}:
            raise ValueError("a categorical range takes only a non-empty list `choices`")
        return Param(name, kind, choices=choices, model=model)
    low, high, log = spec.get("low"), spec.get("high"), spec.get("log", False)
    number = int if kind == "int" else (int, float)
    if "choices" in spec or any(isinstance(v, bool) or not isinstance(v, number) for v in (low, high)):
        raise ValueError(f"a {kind} range takes `low` and `high`, both {'whole ' if kind == 'int' else ''}numbers")
    if not isinstance(log, bool):
        raise ValueError(f"log must be true or false, not {log!r}")
    if not low < high:
        raise ValueError(f"low {low} is not below high {high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low above 0, not {low}")
    return Param(name, kind, low=low, high=high, log=log, model=model)


def _check_type(p: Param, default) -> None:
    """A float range on a whole-number option, a number range on a list or a switch, or a choice of
    another type than the option's (2.5 epochs, "yes" for a switch) is refused."""
    if p.type == "categorical":
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list,)}
        want = kinds.get(type(default))
        wrong = [c for c in p.choices if want and (not isinstance(c, want) or isinstance(c, bool) != (bool in want))]
        if wrong:
            raise ValueError(f"choice {wrong[0]!r} is not of the option's type ({type(default).__name__})")
        return
    if isinstance(default, (bool, str, list)):
        raise ValueError(f"this option takes {type(default).__name__} values: use {{type: categorical, choices: "
                         "[...]}")
    if p.type == "float" and isinstance(default, int):
        raise ValueError("this option takes whole numbers: use type: int")


def _model_fields() -> dict:
    from training.model import ModelConfig
    return {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
            for f in dataclasses.fields(ModelConfig)}


def _train_problem(base: TrainConfig, name: str, value) -> str | None:
    """Why `value` is not a value of the training option `name` (its declared range or choices)."""
    try:
        TrainConfig.from_dict({**base.to_dict(), name: value})
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def _model_problem(base: TrainConfig, name: str, value) -> str | None:
    """Why the base recipe's model with `name` set to `value` is not a model (None: it is)."""
    from training.model import preset_config
    try:
        preset_config(base.preset, **{**base.model, name: value})
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def base_point(base: TrainConfig, params: list[Param]) -> tuple[dict | None, str]:
    """The base recipe as a point of the space (Optuna's stored values), so that a new study's
    first trial is the recipe itself: the winner is then compared with it at an equal time budget.
    (None, why) when one of its values lies outside the space."""
    import dataclasses as dc
    from training.model import preset_config
    model = dc.asdict(preset_config(base.preset, **base.model))
    point = {}
    for p in params:
        value = model[p.name] if p.model else getattr(base, p.name)
        if p.type == "categorical":
            if value not in p.choices:
                return None, f"its {p.name} {value!r} is not one of the space's choices"
            point[p.name] = p.labels()[p.choices.index(value)]
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not p.low <= value <= p.high:
            return None, f"its {p.name} {value!r} is outside the space's [{p.low}, {p.high}]"
        else:
            point[p.name] = value
    return point, ""


def apply(base: dict, params: list[Param], sampled: dict) -> dict:
    """The recipe (a TrainConfig dict) of a trial: `base` with the sampled values."""
    out = {**base, "model": dict(base.get("model") or {})}
    for p in params:
        if p.name in sampled:
            (out["model"] if p.model else out)[p.name] = p.value(sampled[p.name])
    return out
