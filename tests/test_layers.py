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


# The contract: the modules of pipeline/ that stage 2 (and decoding, sweep) may read; the rest is
# stage 1's own rooms (layout, validate, store, stats, shards, build, verify, publish, workers).
CONTRACT = {"features", "vocab", "manifest", "shardformat", "atomic", "errors", "remote", "reading", "npyfile",
            "limits", "options", "strict"}


def pipeline_modules(path: Path) -> set[str]:
    """The pipeline modules a module imports (`from pipeline import manifest`, `from pipeline.remote ...`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "pipeline":
            parts = node.module.split(".")
            out.update(parts[1:2] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return out


@pytest.mark.parametrize("package", ["training", "decoding", "sweep"])
def test_stage_2_reads_only_the_contract(package):
    """...and its command modules also the click side of the options."""
    wrong = {}
    for path in modules(package):
        allowed = CONTRACT | ({"cli_options"} if path.name == "commands.py" else set())
        extra = pipeline_modules(path) - allowed
        if extra:
            wrong[str(path.relative_to(ROOT))] = sorted(extra)
    assert not wrong, f"stage-1 rooms read from stage 2: {wrong}"


CLICK_SIDE = "pipeline/cli_options.py"      # makes click options from the config dataclasses' fields


def command_side(rel: str) -> bool:
    return rel.endswith("commands.py") or rel.startswith("phonerec/") or rel == CLICK_SIDE


def test_click_only_in_command_modules():
    """...and in pipeline/cli_options.py, which only the command modules import."""
    users = [str(p.relative_to(ROOT)) for pkg in PACKAGES for p in modules(pkg) if "click" in imported(p)]
    assert users and all(command_side(u) for u in users), users


def test_the_library_never_loads_click():
    """Transitively: importing every library module (all but the command side) in a fresh
    interpreter leaves click out of sys.modules; a notebook that loads a checkpoint or builds a
    model does not pull in the command line. The first module that brings it in is named."""
    import subprocess
    import sys
    names = [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
             for pkg in PACKAGES for p in modules(pkg)
             if not command_side(str(p.relative_to(ROOT))) and p.name != "__main__.py"]
    code = ("import importlib, sys\n"
            f"for n in {names!r}:\n"
            "    importlib.import_module(n)\n"
            "    if 'click' in sys.modules:\n"
            "        sys.exit('click loaded by importing ' + n)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and len(names) > 40, res.stderr[-2000:]


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
    """...in the benchmarks too (bench/: their child processes run through bench/harness.py)."""
    offenders = [f for pkg in (*PACKAGES, "bench") for f in long_functions(pkg)]
    assert not offenders, f"functions longer than {MAX_LINES} lines: " + "; ".join(offenders)
