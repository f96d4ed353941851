"""Every option declared once: a config dataclass field carries its command-line option's help,
range, choices and flag (`option`), `click_options` makes the click options of a dataclass, and
`from_dict` checks a recipe or a checkpoint's dict against the same fields. `--help`, a YAML
recipe and the dataclass therefore cannot disagree (the way icefall's `add_*_arguments` and
lhotse's option groups keep one definition per option).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import MISSING, dataclass
from typing import Any, Callable

import click

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

    def click_type(self, integer: bool) -> click.ParamType:
        if integer:
            return click.IntRange(min=self.low, max=self.high, min_open=self.open_low, max_open=self.open_high)
        return FiniteFloatRange(min=self.low, max=self.high, min_open=self.open_low, max_open=self.open_high)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that refuses nan (which compares false with both bounds, so passes them)
    and inf: a usage error naming the option."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not {'a' if rv != rv else 'a finite'} number.", param, ctx)
        return rv


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


# ---------------------------------------------------------------------------------- click side

class _LazyChoice(click.Choice):
    """click.Choice over choices read when first needed (`option(choices=function)`)."""

    def __init__(self, read: Callable[[], tuple]) -> None:
        self._read = read
        super().__init__(())

    @property
    def choices(self) -> tuple:
        return tuple(self._read())

    @choices.setter
    def choices(self, value) -> None:      # click.Choice.__init__ assigns it
        pass


def section_of(config: type, name: str) -> str | None:
    """The help section of field `name`: the SECTION of the config class that declares it (only its
    own: a subclass's options are the command's main ones)."""
    for k in config.__mro__:
        if name in vars(k).get("__annotations__", {}):
            return vars(k).get("SECTION")
    return None


class FieldCommand(click.Command):
    """A command whose --help lists its own options first, then each SECTION of shared ones (the
    options for shards at a URL) under its own heading."""

    def format_options(self, ctx, formatter) -> None:
        groups: dict[str, list] = {"Options": []}
        for p in self.get_params(ctx):
            record = p.get_help_record(ctx)
            if record:
                section = section_of(p.config, p.field.name) if isinstance(p, FieldOption) else None
                groups.setdefault(section or "Options", []).append(record)
        for title, records in groups.items():
            if records:
                with formatter.section(title):
                    formatter.write_dl(records)


class FieldOption(click.Option):
    """A click option made from a config field; `config` and `field` say which (tests walk them).
    A callable help is called when --help is shown (e.g. the presets' sizes, which need torch)."""

    def __init__(self, decls, *, config: type, field: dataclasses.Field, **kwargs) -> None:
        self.config, self.field = config, field
        help_ = kwargs.pop("help", None)
        self._help_fn = help_ if callable(help_) else None
        super().__init__(decls, help=None if callable(help_) else help_, **kwargs)

    def get_help_record(self, ctx):
        if self._help_fn is not None and self.help is None:
            self.help = self._help_fn()
        return super().get_help_record(ctx)


def _click_kwargs(f: dataclasses.Field) -> dict:
    """How field `f` looks to click: its type, flag form, default and help."""
    m, default = f.metadata, default_of(f)
    flag = m.get("flag") or "--" + f.name.replace("_", "-")
    kw: dict[str, Any] = {"help": m.get("help") or None, "metavar": m.get("metavar"), "show_default": True}
    if isinstance(default, bool):
        if default is True and not m.get("flag"):
            raise ValueError(f"{f.name}: a switch on by default needs flag='--x/--no-x' (or '--quiet' to invert)")
        kw["show_default"] = "/" in flag
        kw.update({"is_flag": True, "default": default} if default is False or "/" in flag else
                  {"flag_value": False, "default": True})     # '--quiet' sets progress False
    elif m.get("multiple"):
        kw.update(multiple=True, default=tuple(default), show_default=False)
    elif m.get("range") is not None:
        kw.update(type=m["range"].click_type(isinstance(default, int)), default=default)
    elif m.get("choices") is not None:
        c = m["choices"]
        kw.update(type=_LazyChoice(c) if callable(c) else click.Choice(list(c)), default=default)
    elif m.get("path"):
        # '' means none: click would check that '' exists
        kw.update(type=click.Path(**PATHS[m["path"]]), default=default or None, show_default=bool(default))
    else:
        kw.update(default=default, show_default=default not in ("", None))
    if m.get("required"):               # no default at all: click >= 8.3 takes default=None as a value
        kw.pop("default", None)
        kw.update(required=True, show_default=False)
    return {"decls": [flag, f.name], **kw}


def click_options(cls):
    """A decorator adding the options of `cls`'s fields, its own first, then its bases' (a
    command's main options above the shared fetch options); fields with `cli=False` are left out."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    order = dict.fromkeys(n for k in cls.__mro__ for n in vars(k).get("__annotations__", {}) if n in fields)
    chosen = [fields[n] for n in order if fields[n].metadata.get("cli", True)]

    def apply(fn):
        for f in reversed(chosen):      # click lists options in the order the decorators run outward
            kw = _click_kwargs(f)
            fn = click.option(*kw.pop("decls"), cls=FieldOption, config=cls, field=f, **kw)(fn)
        return fn
    return apply


def given(ctx: click.Context) -> set[str]:
    """The names of the parameters given on the command line (not defaults)."""
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}


def config_of(cls, params: dict):
    """`cls` from a command's parameters (`None` from a path option means its default '')."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: (default_of(names[k]) if v is None else v) for k, v in params.items() if k in names}
    return from_dict(cls, values)
