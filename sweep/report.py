"""A sweep's outputs, rewritten from the study after every trial (so any machine on a shared
storage writes the same): trials.tsv and trials.json, best.yaml (the best trial's recipe, for
`train --config`), and the plots: history.png, importances.png, parallel.png. The plots are
drawn on bare matplotlib Figures (no pyplot: a notebook's backend is left alone)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipeline.atomic import atomic_path, write_text

from .space import Param

STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def state_of(t) -> str:
    return "interrupted" if t.user_attrs.get("interrupted") else STATES.get(t.state.name, t.state.name.lower())


def rows(study) -> list[dict]:
    """One row per trial: number, state, dev PER (the best epoch's), per epoch, minutes, parameters."""
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "WAITING":        # queued (enqueue_trial), not begun
            continue
        pers = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
        value = t.value if t.state.name == "COMPLETE" else (min(pers) if pers else None)
        out.append({"number": t.number, "state": state_of(t), "dev_per": value, "dev_per_by_epoch": pers,
                    "epochs": len(pers), "minutes": t.user_attrs.get("minutes"), "params": dict(t.params),
                    "error": t.user_attrs.get("error", ""), "worker": t.user_attrs.get("worker", ""),
                    "folder": t.user_attrs.get("folder", ""), "base_recipe": bool(t.user_attrs.get("base_recipe"))})
    return out


def tsv(table: list[dict]) -> str:
    names = sorted({k for r in table for k in r["params"]})
    head = ["number", "state", "dev_per", "epochs", "minutes", *names, "dev_per_by_epoch", "error", "folder"]

    def cell(v) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.6g}"
        return " ".join(str(v).split())          # no tab or newline inside a cell
    lines = ["\t".join(head)]
    for r in table:
        per_epoch = ",".join(f"{p:.4f}" for p in r["dev_per_by_epoch"])
        lines.append("\t".join(cell(v) for v in [r["number"], r["state"], r["dev_per"], r["epochs"], r["minutes"],
                                                *(r["params"].get(n) for n in names), per_epoch, r["error"],
                                                r["folder"]]))
    return "\n".join(lines) + "\n"


def best_recipe(study, folder: Path) -> str | None:
    """best.yaml's text: the best complete trial's recipe with a header saying where it came from."""
    import yaml
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and "recipe" in t.user_attrs]
    if not done:
        return None
    best = min(done, key=lambda t: t.value)
    recipe = best.user_attrs["recipe"]
    minutes, budget = best.user_attrs.get("minutes", 0), best.user_attrs.get("trial_minutes", 0)
    head = [f"# The best recipe of study {study.study_name}: trial {best.number} of {len(rows(study))}, "
            f"dev PER {100 * best.value:.2f} % (greedy, the better of the trained and averaged weights)",
            f"# after {minutes:.1f} min of training (trial budget {budget:g} min; time_budget below is the base "
            "recipe's); the trials: " + str(folder / "trials.tsv"),
            "# sampled: " + ", ".join(f"{k}={v}" for k, v in best.params.items()),
            *_against_base(done, best),
            "# Train it: phonerec train --config best.yaml"]
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe, sort_keys=False, default_flow_style=None)


def _against_base(done: list, best) -> list[str]:
    """best.yaml's line comparing the winner with the base recipe's own trial (same budget)."""
    base = [t for t in done if t.user_attrs.get("base_recipe")]
    if not base:
        return []
    if base[0] is best:
        return ["# it is the base recipe itself: no sampled recipe beat it"]
    return [f"# the base recipe (trial {base[0].number}, the same budget): dev PER {100 * base[0].value:.2f} %"]


def trial_line(t) -> str:
    """The log's line of a finished trial."""
    pers = [t.intermediate_values[e] for e in sorted(t.intermediate_values)]
    per = f"dev PER {100 * min(pers):.2f} % after {len(pers)} epoch(s)" if pers else "no epoch"
    params = ", ".join(f"{k}={_short(v)}" for k, v in t.params.items())
    err = f": {t.user_attrs['error']}" if t.user_attrs.get("error") else ""
    what = " (the base recipe)" if t.user_attrs.get("base_recipe") else ""
    return f"trial {t.number}{what} {state_of(t)} in {t.user_attrs.get('minutes', 0):.1f} min, {per} ({params}){err}"


def _short(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_all(study, folder: Path, space: list[Param], log) -> dict:
    """Every output of the sweep into `folder`; returns what was written ({"best": path or None})."""
    folder.mkdir(parents=True, exist_ok=True)
    table = rows(study)
    write_text(folder / "trials.json", json.dumps(table, indent=1) + "\n")
    write_text(folder / "trials.tsv", tsv(table))
    text = best_recipe(study, folder)
    best = None
    if text is not None:
        best = folder / "best.yaml"
        write_text(best, text)
    _save(plot_history(table), folder / "history.png")
    _save(plot_parallel(table, space), folder / "parallel.png")
    fig, why = plot_importances(study)
    if fig is None:
        log(f"no importances.png yet: {why}")
    _save(fig, folder / "importances.png")
    return {"best": best}


def _save(fig, path: Path) -> None:
    if fig is None:
        return
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def plot_history(table: list[dict]):
    """Dev PER by trial (complete, pruned, and interrupted: its best epoch so far) and the best so far."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for state, mark in (("complete", "o"), ("pruned", "x"), ("interrupted", "+")):
        pts = [(r["number"], 100 * r["dev_per"]) for r in table if r["state"] == state and r["dev_per"] is not None]
        if pts:
            ax.plot(*zip(*pts), mark, label=state, linestyle="none")
    done = [(r["number"], 100 * r["dev_per"]) for r in table if r["state"] == "complete"]
    if done:
        best, xs, ys = math.inf, [], []
        for n, v in sorted(done):
            best = min(best, v)
            xs.append(n)
            ys.append(best)
        ax.step(xs, ys, where="post", color="C3", label="best so far")
    counts = ", ".join(f"{n} {k}" for k in ("complete", "pruned", "interrupted", "failed")
                       if (n := sum(r["state"] == k for r in table)) or k != "interrupted")
    ax.set(title=f"optimization history ({counts})", xlabel="trial", ylabel="dev PER (%)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_parallel(table: list[dict], space: list[Param]):
    """Parallel coordinates: one line per complete trial over the parameters (each axis scaled to
    its range; log axes in log space), coloured by dev PER."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    done = [r for r in table if r["state"] == "complete" and r["dev_per"] is not None]
    fig = Figure(figsize=(max(6, 1.6 * len(space) + 2), 4))
    ax = fig.subplots()
    if done:
        norm = Normalize(min(100 * r["dev_per"] for r in done), max(100 * r["dev_per"] for r in done) + 1e-9)
        cmap = colormaps["viridis_r"]
        for r in sorted(done, key=lambda r: -r["dev_per"]):       # the best drawn last, on top
            ys = [_scaled(p, r["params"].get(p.name)) for p in space]
            ax.plot(range(len(space)), ys, "-o", color=cmap(norm(100 * r["dev_per"])), alpha=0.8)
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="dev PER (%)")
    ax.set_xticks(range(len(space)), [_axis_label(p) for p in space], fontsize=8)
    ax.set(title="parallel coordinates (complete trials)", ylim=(-0.05, 1.05), yticks=[0, 1],
           yticklabels=["low", "high"])
    ax.grid(axis="x", alpha=0.5)
    fig.tight_layout()
    return fig


def _scaled(p: Param, v) -> float:
    if v is None:
        return float("nan")
    if p.type == "categorical":
        labels = p.labels()
        return labels.index(v) / max(1, len(labels) - 1) if v in labels else float("nan")
    lo, hi, x = float(p.low), float(p.high), float(v)
    if p.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(x)
    return (x - lo) / (hi - lo)


def _axis_label(p: Param) -> str:
    if p.type == "categorical":
        return f"{p.name}\n{' | '.join(map(str, p.labels()))}"
    return f"{p.name}\n{p.low:g} .. {p.high:g}{' (log)' if p.log else ''}"


def plot_importances(study):
    """Optuna's parameter importances (PED-ANOVA) of the complete trials, as bars; (None, why)
    when they cannot be computed yet."""
    import warnings

    import optuna
    from matplotlib.figure import Figure
    if sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) < 2:
        return None, "it needs two complete trials"
    try:
        with warnings.catch_warnings():          # "too few trials": the figure says how many there were
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except Exception as exc:        # noqa: BLE001 - too few trials, one value everywhere: no figure yet
        return None, " ".join(str(exc).split())[:200]
    if not imp:
        return None, "no complete trial with parameters"
    names = list(imp)[::-1]
    fig = Figure(figsize=(6, 0.4 * len(names) + 1.5))
    ax = fig.subplots()
    ax.barh(names, [imp[n] for n in names], color="C0")
    done = sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))
    ax.set(title=f"parameter importances (PED-ANOVA, {done} complete trials)", xlabel="importance for dev PER")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig, ""
