"""The command line's side of the options (pipeline/options.py declares them without click): the
click options of a config dataclass's fields (`click_options`), the command class that groups
them in --help, and the config a command's parameters make (`config_of`). Imported only by the
commands modules, so that the library never loads click."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import click

from .errors import UsageProblem
from .options import PATHS, Range, default_of, from_dict


def range_type(r: Range, integer: bool) -> click.ParamType:
    if integer:
        return click.IntRange(min=r.low, max=r.high, min_open=r.open_low, max_open=r.open_high)
    return FiniteFloatRange(min=r.low, max=r.high, min_open=r.open_low, max_open=r.open_high)


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that refuses nan (which compares false with both bounds, so passes them)
    and inf: a usage error naming the option."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not {'a' if rv != rv else 'a finite'} number.", param, ctx)
        return rv


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
        kw.update(type=range_type(m["range"], isinstance(default, int)), default=default)
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


def make_config(cls, params: dict, build: Callable[[], Any] | None = None):
    """The command's config from its parameters (or `build()`: train's recipe under its flags),
    once its fetch options make a FetchPolicy and no location holds a password: a bad value (a
    size, a digest, a password in a URL) is a usage error (UsageProblem), before any work."""
    from .reading import FetchConfig
    from .remote import FetchError, refuse_credentials
    try:
        cfg = build() if build is not None else config_of(cls, params)
        for f in dataclasses.fields(cfg):
            refuse_credentials(getattr(cfg, f.name), "--" + f.name.replace("_", "-"))
        if isinstance(cfg, FetchConfig):
            cfg.fetch_policy()
    except (ValueError, FetchError) as exc:
        raise UsageProblem(str(exc)) from None
    return cfg


def declare_outputs(writes: str, *, written_on_damage: bool = False) -> None:
    """What the running command writes, for the error boundary (phonerec/cli.py): a full disk's
    line names it; a damaged shard's says "nothing was written" unless `written_on_damage`."""
    meta = click.get_current_context().meta
    meta["phonerec.writes"], meta["phonerec.written_on_damage"] = writes, written_on_damage


def recipe_options(fn):
    """--config FILE and --set KEY=VALUE: a recipe under the command's flags (train; sweep's base
    recipe of every trial)."""
    fn = click.option("--set", "model_set", multiple=True, metavar="KEY=VALUE",
                      help="Override a model setting, e.g. --set lstm_layers=2 --set conv_channels=[128,128].")(fn)
    return click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                        help="YAML/JSON recipe of any options below (command-line flags override it).")(fn)


def model_overrides(values: tuple[str, ...]) -> dict:
    """--set KEY=VALUE pairs, each VALUE read as a YAML value by the strict reader (a syntax error
    or a nested structure is a usage error naming it; the types are checked with the recipe's)."""
    from pipeline.strict import DocumentError, parse
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k.strip():
            raise click.BadParameter(f"{v!r}: expected KEY=VALUE, e.g. lstm_layers=2 or conv_channels=[128,128]",
                                     param_hint="'--set'")
        try:
            out[k.strip()] = parse(val, f"--set {k.strip()}")
        except DocumentError as exc:
            raise click.BadParameter(str(exc).replace(":1:", ":", 1), param_hint="'--set'") from None
    return out
