"""Every option declared once: a config dataclass field carries its command-line option's help,
range, choices and flag (`option`), `from_dict` checks a recipe or a checkpoint's dict against
the same fields, and `pipeline.cli_options` (the commands' side: the library never imports click)
makes the click options from them. `--help`, a YAML recipe and the dataclass therefore cannot
disagree (the way icefall's `add_*_arguments` and lhotse's option groups keep one definition per
option).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass
from typing import Any, Callable

from .strict import type_problem


@dataclass(frozen=True)
class Range:
    """The values a numeric option takes (open: the bound itself excluded)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def problem(self, value) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{value!r} is not a number"
        if value != value:                               # NaN compares false with both bounds
            return "nan is not a number"
        if value in (math.inf, -math.inf):                # no option means "without end" by inf
            return f"{value} is not a finite number"
        if self.low is not None and (value < self.low or self.open_low and value == self.low):
            return f"{value} is {'not above' if self.open_low else 'below'} {self.low}"
        if self.high is not None and (value > self.high or self.open_high and value == self.high):
            return f"{value} is {'not below' if self.open_high else 'above'} {self.high}"
        return None


def option(default: Any = MISSING, *, help: str = "", range: Range | None = None,
           choices: tuple | Callable[[], tuple] | None = None, flag: str | None = None, metavar: str | None = None,
           factory: Callable | None = None, multiple: bool = False, path: str | None = None,
           required: bool = False, cli: bool = True) -> Any:
    """A dataclass field and its option. `flag`: the option's declaration when not `--field-name`
    ('--quiet' on a True default inverts it: given, the field is False; '--a/--no-a' is a pair);
    `choices` may be a function (read when first needed: e.g. presets, which need torch);
    `path`: one of PATHS, checked by click before any work; `required`: no default on the command
    line, and '' is refused; `cli=False`: a recipe and checkpoint key with no flag of its own."""
    assert path is None or path in PATHS, path
    meta = {"help": help, "range": range, "choices": choices, "flag": flag, "metavar": metavar,
            "multiple": multiple, "path": path, "required": required, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# What a path option must be (click.Path's checks): '' means none for an existing file.
PATHS = {"file": {"dir_okay": False}, "existing-file": {"dir_okay": False, "exists": True},
         "folder": {"file_okay": False}, "existing-folder": {"file_okay": False, "exists": True}}


def redefault(cls, name: str, default: Any, help: str | None = None) -> Any:
    """`cls`'s field `name` with another default (and help): a command whose option means the same
    but starts elsewhere (evaluate's split is dev-clean, predict's test-clean)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = dict(f.metadata)
    if help is not None:
        meta["help"] = help
    return dataclasses.field(default=default, metadata=meta)


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


class Options:
    """Base of the config dataclasses: a value outside its field's range or choices, or a required
    one left empty, is a ValueError naming the field and its flag, whether it came from a flag, a
    recipe, a checkpoint's config or Python code."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            problem = _problem(f, getattr(self, f.name))
            if problem:
                raise ValueError(f"{f.name} ({flag_of(f)}): {problem}")


def _problem(f: dataclasses.Field, value) -> str | None:
    m = f.metadata
    if value is None and f.default is None:        # "not given": the command decides (e.g. from a record)
        return None
    if m.get("range") is not None:
        return m["range"].problem(value)
    if m.get("choices") is not None:
        choices = m["choices"]() if callable(m["choices"]) else m["choices"]
        if value not in choices:
            return f"{value!r} is not one of {', '.join(map(str, choices))}"
    if m.get("required") and value in ("", None):
        return "is required"
    return None


def from_dict(cls, data: dict, what: str | None = None):
    """Strict: an unknown key, a value of another type than its field's (pipeline/strict.py: ints
    are ints, floats finite, bools bools) or, for an Options class, a value out of its range or
    choices is a ValueError naming it."""
    check_known(cls, data, what)
    check_types(cls, data)
    return cls(**data)


def check_types(cls, data: dict, finite: bool = True) -> None:
    """A ValueError naming the first value of `data` whose type is not its field's."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            continue
        problem = type_problem(f.type if isinstance(f.type, str) else getattr(f.type, "__name__", ""), value, finite)
        if problem:
            label = f"{key} ({flag_of(f)})" if f.metadata.get("cli") else key
            raise ValueError(f"{label}: {problem}")


def check_known(cls, data: dict, what: str | None = None) -> None:
    """A ValueError naming the keys of `data` that are not `cls`'s fields, and the valid ones."""
    odd = [k for k in data if not isinstance(k, str)]
    if odd:
        raise ValueError(f"{what or cls.__name__} key {odd[0]!r} is not a name (keys are option names)")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {what or cls.__name__} key(s): {', '.join(unknown)}; "
                         f"valid keys: {', '.join(sorted(names))}")


def known(cls, data: dict) -> dict:
    """The keys of `data` that are `cls`'s fields: a checkpoint of another version may hold more."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def flag_of(f: dataclasses.Field) -> str:
    flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
    return flag.split("/")[0]
