"""The training-step row of `make bench` (issue 28): two epochs of the CPU demo recipe as it was
before issue 28 ("before": the code and configs/demo.yaml of BEFORE_REV) and as it is ("today"),
on the same shards and, within each, the same batches.

Each arm is `phonerec train --config configs/demo.yaml --epochs 2` in a process of its own, so its
CPU time, system time and page faults are its own (os.wait4's rusage, loader workers included):
  before: BEFORE_REV's tree (`git archive`), its recipe: x2 time downsampling, 2 loader workers,
          glibc's malloc defaults, torch's dropout and foreach AdamW;
  today:  this tree's recipe: x4, no worker processes, the host tuning detected
          (training/host.py), the cheaper CPU dropout, fused AdamW.
Two epochs, because the workers' cost shows from the second on (they are forked again from the
grown trainer). Reported per arm: training frames/s of each epoch, CPU seconds per epoch (user +
system of the whole process over 2: setup, epochs and dev passes), system seconds, minor page
faults, and the dev PER after the first epoch and the second (a faster step that learns worse per
epoch is no win). The ratio is epochs per CPU-hour, today's over before's; the target is >= 2 at a
dev PER after the first epoch no worse.

Usage (from the repository root of a git clone):
  python -m bench.bench_train [--data RAW_CORPUS] [--train 1000] [--work DIR] [--out results]

Without --data a LibriSpeech-shaped learnable corpus (corpora/random.py, 10-16 s utterances; dev
and test a tenth of training) is generated under --work (bench_shards.ensure_corpus); --data
takes any raw corpus (e.g. `make demo`'s data/demo).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from bench import ROOT
from bench.bench_shards import ensure_corpus, phonerec
from bench.harness import run_child

RECIPE = "configs/demo.yaml"          # each arm's own, relative to its tree
BEFORE_REV = "6ecf3af"                 # the last commit before issue 28's changes
EPOCHS = 2


def build_shards(data: Path, shards: Path) -> None:
    res = subprocess.run(phonerec("shards", "--data", str(data), "--shards", str(shards), "--quiet"), cwd=ROOT,
                         capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"phonerec shards failed: {res.stderr[-2000:]}")


def before_tree(work: Path) -> Path | None:
    """BEFORE_REV's files under work (git archive; made once), or None outside a git clone that
    holds it (a shallow clone, an unpacked tarball)."""
    tree = work / f"tree-{BEFORE_REV}"
    if not (tree / "phonerec").is_dir():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE_REV], capture_output=True)
        if archive.returncode:
            return None
        tree.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def run_arm(name: str, tree: Path, shards: Path, work: Path, extra: list[str], max_steps: int = 0) -> dict:
    """EPOCHS epochs of `tree`'s recipe with `tree`'s code, in its own process (cwd = tree, so its
    packages are the ones imported); its rusage and its metrics records."""
    run = work / f"arm-{name}"
    cmd = phonerec("train", "--config", RECIPE, "--shards", str(shards), "--weights", str(run / "weights"),
                    "--results", str(run / "results"), "--epochs", str(EPOCHS), "--quiet",
                    "--checkpoint-every", "0", *(["--max-steps", str(max_steps)] if max_steps else []), *extra)
    child = run_child(cmd, cwd=tree)
    if child.returncode:
        raise RuntimeError(f"arm {name} failed: {child.stderr[-2000:]}")
    recs = [json.loads(ln) for ln in (run / "results" / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {"arm": name, "code": _code(tree),
            "wall_s": child.wall_s, "cpu_s": child.cpu_s / EPOCHS,
            "sys_s": child.sys_s / EPOCHS, "minor_faults": child.minor_faults // EPOCHS,
            "frames_per_s": [r["frames_per_s"] for r in recs], "epoch_s": [r["epoch_seconds"] for r in recs],
            "dev_per": [r["dev_per"] for r in recs], "steps": recs[-1]["step"],
            "log": [ln for ln in child.stderr.splitlines() if ln][:3]}


def run(data: Path | None = None, *, n_train: int = 1000, work: Path = Path("/tmp/phonerec-bench"),
        quick: bool = False, log=print) -> dict:
    """Both arms on the same shards; the rows and the ratios."""
    work.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = ensure_corpus(work, 24 if quick else n_train, log=log)
    shards = work / f"shards-{data.name}"
    build_shards(data.resolve(), shards.resolve())
    rows = []
    before = before_tree(work)
    arms = [("today", ROOT, ["--time-budget", "0"])]
    if before is not None:
        arms.insert(0, ("before", before, []))
    else:
        log(f"no 'before' arm: this clone does not hold {BEFORE_REV} (git fetch --unshallow)")
    for name, tree, extra in arms:
        log(f"training arm '{name}': {EPOCHS} epochs of {RECIPE} with the code of {_code(tree)}")
        rows.append(run_arm(name, tree, shards.resolve(), work.resolve(), extra, max_steps=3 if quick else 0))
    res = {"config": {"recipe": RECIPE, "before": BEFORE_REV, "data": str(data), "quick": quick, "epochs": EPOCHS},
           "rows": rows, "ratio_epochs_per_cpu_hour": None, "ratio_frames_per_s": None, "dev_per_change": None}
    if len(rows) == 2:
        before_row, today = rows
        first = (today["dev_per"][0], before_row["dev_per"][0])
        res.update(ratio_epochs_per_cpu_hour=before_row["cpu_s"] / today["cpu_s"],
                   ratio_frames_per_s=sum(today["frames_per_s"]) / sum(before_row["frames_per_s"]),
                   dev_per_change=first[0] - first[1] if None not in first else None)
    return res


def _code(tree: Path) -> str:
    return "this tree" if tree == ROOT else BEFORE_REV


def _pers(values: list) -> str:
    return " / ".join(f"{100 * v:.1f} %" if v is not None else "–" for v in values)


def markdown(res: dict) -> str:
    lines = ["| recipe and code | training frames/s, epoch 1 / 2 | CPU s per epoch | of it system | minor page faults "
             "per epoch | dev PER after epoch 1 / 2 |", "|---|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        fps = " / ".join(f"{v:,.0f}" for v in r["frames_per_s"])
        lines.append(f"| {r['arm']} ({r['code']}) | {fps} | {r['cpu_s']:.1f} | {r['sys_s']:.1f} | "
                     f"{r['minor_faults']:,} | {_pers(r['dev_per'])} |")
    ratio = res["ratio_epochs_per_cpu_hour"]
    if ratio is None:
        return "\n".join(lines + ["", f"(No 'before' arm: this clone does not hold {BEFORE_REV}.)"])
    lines += ["", f"Epochs per CPU-hour, today over before: **{ratio:.2f}x** (target >= 2x at a dev PER after "
                  "epoch 1 no worse; "
                  f"{'met' if ratio >= 2 and (res['dev_per_change'] or 0) <= 0 else 'not met'}); training frames/s "
                  f"{res['ratio_frames_per_s']:.2f}x."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a raw corpus (default: a generated one under --work)")
    ap.add_argument("--train", type=int, default=1000,
                    help="training utterances of the generated corpus (dev: a tenth)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phonerec-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "results")
    ap.add_argument("--quick", action="store_true", help="a tiny corpus and 3 steps per arm (for tests)")
    a = ap.parse_args(argv)
    res = run(a.data, n_train=a.train, work=a.work, quick=a.quick)
    res["markdown"] = markdown(res)
    if not a.quick:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "bench_train.json").write_text(json.dumps(res, indent=1))
    print(res["markdown"])
    return res


if __name__ == "__main__":
    main()
