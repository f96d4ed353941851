"""One strict reader for every config-shaped input (a recipe, a --set value, a checkpoint's stored
config, a decode record): the document parsed safely (no tags that build objects), duplicate keys
refused, nesting and size bounded, every problem one line naming the file and the line; then each
value checked against its dataclass field's type (`type_problem`): ints are ints, floats finite,
bools real bools ("off" is not False), keys strings. Ranges and choices come from the same
declarations the flags use (pipeline/options.py)."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

MAX_DOCUMENT_BYTES = 1 << 20          # a recipe or record is a page of settings, not a data file
MAX_DEPTH = 16                        # nesting of mappings and lists
MAX_NODES = 100_000                   # values in all (YAML aliases may repeat one many times)

# YAML 1.1 (PyYAML) reads 2e-3 and 1e9 as strings: every user means a number, as YAML 1.2 does.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$")


class DocumentError(ValueError):
    """A config-shaped document or value that cannot be used; one line naming its source."""


def read_document(path: str | Path, max_bytes: int = MAX_DOCUMENT_BYTES):
    """A YAML or JSON file (JSON by its .json suffix) as plain data, checked as `parse` does; a
    FIFO, device or oversized file is refused before it is read."""
    name = str(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise DocumentError(f"{name}: not a regular file; give a YAML or JSON file")
        if st.st_size > max_bytes:
            raise DocumentError(f"{name}: {st.st_size} bytes, over the limit of {max_bytes} for a settings file")
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(f"{name}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DocumentError(f"{name}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8") from None
    return parse(text, name, "json" if name.lower().endswith(".json") else "yaml")


def parse(text: str, name: str, syntax: str = "yaml"):
    """`text` as plain data (dicts, lists, str, int, float, bool, None): a syntax error, a
    duplicated key, a `!!python/...` tag or nesting deeper than MAX_DEPTH is a DocumentError
    naming `name` and the line."""
    try:
        data = _parse_json(text, name) if syntax == "json" else _parse_yaml(text, name)
    except RecursionError:
        raise DocumentError(f"{name}: nested too deeply (more than {MAX_DEPTH} levels)") from None
    check_shape(data, name)
    return data


def _parse_json(text: str, name: str):
    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise DocumentError(f"{name}: duplicate key {k!r}; give each setting once")
            out[k] = v
        return out

    def constant(word):
        raise DocumentError(f"{name}: {word} is not a number (JSON has no {word}); give a finite number")
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise DocumentError(f"{name}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def _parse_yaml(text: str, name: str):
    import yaml
    try:
        return yaml.load(text, Loader=_loader())          # a SafeLoader subclass: no tag builds an object
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = " ".join(f"{exc.context or ''} {exc.problem or ''}".split())
        raise DocumentError(f"{where}: invalid YAML ({problem[:160]})") from None
    except yaml.YAMLError as exc:
        raise DocumentError(f"{name}: invalid YAML ({' '.join(str(exc).split())[:160]})") from None


_LOADER = None


def _loader():
    """yaml.SafeLoader (no tag builds an object) that refuses duplicate keys and reads 2e-3 as a
    number; made once, on first use (yaml is imported only when a recipe is read)."""
    global _LOADER
    if _LOADER is None:
        import yaml

        class Loader(yaml.SafeLoader):
            yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}

            def construct_mapping(self, node, deep=False):
                seen: dict = {}
                for key, _ in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                        if key.value in seen:
                            raise yaml.constructor.ConstructorError(
                                None, None, f"duplicate key {key.value!r} (first on line {seen[key.value]}); "
                                            "give each setting once", key.start_mark)
                        seen[key.value] = key.start_mark.line + 1
                return super().construct_mapping(node, deep)

        Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))
        _LOADER = Loader
    return _LOADER


def check_shape(data, name: str) -> None:
    """Nesting at most MAX_DEPTH, at most MAX_NODES values, every mapping key a string (walked
    without recursion, each shared YAML alias counted where it is used)."""
    stack, nodes = [(data, 0)], 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise DocumentError(f"{name}: more than {MAX_NODES} values; a settings file holds a few dozen")
        if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
            raise DocumentError(f"{name}: nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise DocumentError(f"{name}: key {bad[0]!r} is not a name; keys are option names (strings)")
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


# ------------------------------------------------------------------------------------ types

def type_problem(annotation: str, value, finite: bool = True) -> str | None:
    """Why `value` does not have the type a dataclass field declares (its annotation as written:
    'int', 'float | None', 'list[int]', 'dict', ...), or None. Floats must be finite (`finite`)."""
    kind = annotation.replace(" ", "")
    if kind.endswith("|None"):
        if value is None:
            return None
        kind = kind[: -len("|None")]
    if kind.startswith(("list[", "tuple[")) or kind in ("list", "tuple"):
        if not isinstance(value, (list, tuple)):
            return f"{_short(value)} is not a list"
        inner = kind[kind.index("[") + 1: -1] if "[" in kind else ""
        for item in value if inner and "," not in inner else ():
            problem = type_problem(inner, item, finite)
            if problem:
                return f"item {problem}"
        return None
    check = _CHECKS.get(kind)
    return check(value, finite) if check is not None else None


def _int(value, finite: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{_short(value)} is not a whole number"
    return None


def _float(value, finite: bool) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{_short(value)} is not a number"
    if finite and not math.isfinite(value):
        return f"{value} is not a finite number"
    return None


def _bool(value, finite: bool) -> str | None:
    if not isinstance(value, bool):
        return f"{_short(value)} is not true or false (write true or false, unquoted)"
    return None


def _str(value, finite: bool) -> str | None:
    return None if isinstance(value, (str, os.PathLike)) else f"{_short(value)} is not a string"


def _dict(value, finite: bool) -> str | None:
    if not isinstance(value, dict):
        return f"{_short(value)} is not a mapping"
    bad = [k for k in value if not isinstance(k, str)]
    return f"key {bad[0]!r} is not a name" if bad else None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_CHECKS = {"int": _int, "float": _float, "bool": _bool, "str": _str, "dict": _dict}
