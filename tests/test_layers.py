"""The house's rules, checked on the source: imports run one way (phonerec -> sweep -> training ->
decoding -> pipeline, corpora -> pipeline), click lives only in the command modules (and the options maker), production code reads no
test-only switch, the feature width has one definition, and every function fits on a screen."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("corpora", "pipeline", "decoding", "training", "sweep", "phonerec")
# Which packages each package may import (besides itself and third-party code).
ALLOWED = {"pipeline": set(), "corpora": {"pipeline"}, "decoding": {"pipeline"}, "training": {"pipeline", "decoding"},
           "sweep": {"pipeline", "training"}, "phonerec": {"pipeline", "corpora", "decoding", "training", "sweep"}}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level names of everything a module imports (relative imports count as its own package),
    wherever the import statement is (also inside functions)."""
    own = path.relative_to(ROOT).parts[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add(own if node.level else (node.module or "").split(".")[0])
    return out


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_run_one_way(package):
    wrong = {}
    for path in modules(package):
        up = (imported(path) & set(PACKAGES)) - ALLOWED[package] - {package}
        if up:
            wrong[str(path.relative_to(ROOT))] = sorted(up)
    assert not wrong, f"upward imports: {wrong}"


def test_click_only_in_command_modules():
    """...and in pipeline/options.py, which makes click options from the config dataclasses' fields."""
    users = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in modules(pkg) if "click" in imported(p)]
    assert users and all(u.endswith("commands.py") or u.startswith("phonerec/") or u == "pipeline/options.py"
                         for u in users), users


def test_no_test_switches_in_production_code():
    """No module reads an environment variable meant for tests (fault injection comes from outside)."""
    found = []
    for pkg in PACKAGES:
        for path in modules(pkg):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        node.value.startswith("PHONEREC_") and "TEST" in node.value:
                    found.append(f"{path.relative_to(ROOT)}: {node.value}")
    assert not found, found


def test_the_feature_width_has_one_definition():
    """FEATURE_DIM is defined in pipeline/features.py only; no module spells the width as a literal
    next to a feature shape either."""
    defs = []
    for pkg in PACKAGES:
        for path in modules(pkg):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "FEATURE_DIM"
                                                        for t in node.targets):
                    defs.append(str(path.relative_to(ROOT)))
    assert defs == ["pipeline/features.py"], defs


MAX_LINES = 80            # from the `def` line to the function's last line (decorators not counted)


def long_functions(package: str, limit: int = MAX_LINES) -> list[str]:
    """'path:line name (N lines)' for every function or method of the package longer than `limit`."""
    found = []
    for path in modules(package):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_functions_fit_on_a_screen():
    offenders = [f for pkg in PACKAGES for f in long_functions(pkg)]
    assert not offenders, f"functions longer than {MAX_LINES} lines: " + "; ".join(offenders)
