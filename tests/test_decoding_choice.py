"""The decoding users get by default: after training, a phone LM is estimated and its weights chosen
on dev (training/tuning.py); predict, evaluate and transcribe use the recorded choice; flags
override it; --no-lm turns it off; a damaged record or LM is one line; averaged weights are
scored every epoch and best.pt says which weights it holds."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import DEV, TEST, assert_one_line_error, cli, metrics, train_args
from training.checkpoint import Checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chosen(fast, tmp_path_factory) -> Path:
    """A model1 run of 6 epochs on the `fast` corpus whose training chose its decoding (read-only)."""
    _, shards = fast
    run = tmp_path_factory.mktemp("chosen")
    out = cli(*train_args(shards, run, "--epochs", "6", tune=True)).output
    (run / "train.log").write_text(out)
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _predict(shards, run: Path, results: Path, *extra) -> tuple[str, list[list[str]], dict]:
    out = cli("predict", "--shards", shards, "--weights", run / "weights", "--results", results,
              "--beam-width", "4", "--workers", "0", "--quiet", *extra).output
    with open(results / "submission.csv", newline="") as fh:
        rows = list(csv.reader(fh))[1:]
    return out, rows, json.loads((results / f"predict-{TEST}.json").read_text())


def test_training_chooses_and_records_the_decoding(fast, chosen):
    _, shards = fast
    rec = json.loads((chosen / "weights" / "decode.json").read_text())
    assert rec["split"] == DEV and rec["checkpoint"] == "best.pt"
    assert (chosen / "weights" / rec["lm"]).is_file() and rec["lm"] == "phones-4gram.arpa"
    pairs = {(g["alpha"], g["beta"]) for g in rec["grid"]}
    assert {(a, b) for a in (0.25, 0.5, 0.75, 1.0) for b in (0.0, 1.0, 2.0, 3.0)} <= pairs
    assert [g["per"] for g in rec["grid"]] == sorted(g["per"] for g in rec["grid"])       # best first
    assert (rec["alpha"], rec["beta"]) == (rec["grid"][0]["alpha"], rec["grid"][0]["beta"])
    # the grid's figures are re-scored n-best lists (WeightGrid); lm_per is the chosen pair's own search,
    # which predict repeats
    assert 0 <= rec["lm_per"] <= 1.5 and rec["use_lm"] == (rec["lm_per"] < rec["beam_per"])
    # the dev figures with and without the LM, as evaluate writes them
    ev = json.loads((chosen / "results" / f"evaluate-{DEV}.json").read_text())
    assert ev["beam_per"] == pytest.approx(rec["beam_per"]) and ev["lm_per"] == pytest.approx(rec["lm_per"])
    assert ev["lm_grid"] == rec["grid"]
    log = (chosen / "train.log").read_text()
    assert "no LM" in log and "decode.json" in log


def test_predict_uses_the_record_and_says_so(fast, chosen, tmp_path):
    _, shards = fast
    rec = json.loads((chosen / "weights" / "decode.json").read_text())
    out, rows, made = _predict(shards, chosen, tmp_path / "a")
    lm = str(chosen / "weights" / rec["lm"])
    if rec["use_lm"]:
        assert made["lm"] == lm and (made["alpha"], made["beta"]) == (rec["alpha"], rec["beta"])
        assert f"LM {lm} (alpha {rec['alpha']:g}, beta {rec['beta']:g}" in out
    else:
        assert made["lm"] is None and "did not help" in out
    assert made["checkpoint"] == str(chosen / "weights" / "best.pt") and len(made["checkpoint_sha256"]) == 64
    # the same as the explicit flags; --no-lm gives the plain beam (the TSV's beam column)
    _, explicit, _ = _predict(shards, chosen, tmp_path / "b", "--lm", lm, "--alpha", str(rec["alpha"]),
                              "--beta", str(rec["beta"]))
    if rec["use_lm"]:
        assert explicit == rows
    _, plain, made = _predict(shards, chosen, tmp_path / "c", "--no-lm")
    assert made["lm"] is None and made["lm_from"] == "--no-lm"
    with open(tmp_path / "a" / f"predict-{TEST}.tsv", newline="") as fh:
        tsv = list(csv.DictReader(fh, delimiter="\t"))
    assert [r["beam"] for r in tsv] == [label for _, label in plain]
    assert all(r["arpabet"] or not label for r, (_, label) in zip(tsv, rows))


def test_explicit_weights_override_the_record(fast, chosen, tmp_path):
    """--alpha alone overrides the record's alpha and keeps its beta and LM."""
    _, shards = fast
    rec = json.loads((chosen / "weights" / "decode.json").read_text())
    if not rec["use_lm"]:
        pytest.skip("this run's LM did not help on dev (the record says so; test_predict_uses_the_record covers it)")
    _, _, made = _predict(shards, chosen, tmp_path, "--alpha", "0.123")
    assert (made["alpha"], made["beta"]) == (0.123, rec["beta"]) and made["lm"].endswith(rec["lm"])


def test_an_lm_that_does_not_help_is_recorded_and_left_out(fast, chosen, tmp_path):
    """A grid of absurd weights: the LM loses on dev, the record says so and predict goes without it."""
    _, shards = fast
    run = _copy(chosen, tmp_path)
    out = cli("evaluate", "--shards", shards, "--weights", run / "weights", "--results", run / "results",
              "--tune", "--alphas", "9", "--betas", "-9", "--beam-width", "4", "--workers", "0", "--quiet").output
    rec = json.loads((run / "weights" / "decode.json").read_text())
    assert rec["use_lm"] is False and rec["lm_per"] > rec["beam_per"] and "did not help" in out
    out, _, made = _predict(shards, run, tmp_path / "p")
    assert made["lm"] is None and "did not help" in out


def test_the_grid_grows_past_an_edge(fast, chosen, tmp_path):
    """A best pair on the grid's edge: the grid is extended there (at most twice), and a best pair
    still on the edge is flagged in the record and the output."""
    _, shards = fast
    run = _copy(chosen, tmp_path)
    out = cli("evaluate", "--shards", shards, "--weights", run / "weights", "--results", run / "results",
              "--tune", "--alphas", "0.5,0.6", "--betas", "-8,-7", "--beam-width", "4", "--workers", "0",
              "--quiet").output
    rec = json.loads((run / "weights" / "decode.json").read_text())
    betas = sorted({g["beta"] for g in rec["grid"]})
    # very negative bonuses delete phones: the best sits at the high beta edge, which grows twice
    assert betas[:2] == [-8.0, -7.0] and len(betas) == 4 and "grid's edge" in out
    assert ("beta high" in rec["edge"]) == (rec["beta"] == betas[-1])


def test_a_deleted_or_changed_lm_is_one_line(fast, chosen, tmp_path):
    _, shards = fast
    run = _copy(chosen, tmp_path)
    rec = json.loads((run / "weights" / "decode.json").read_text())
    rec["use_lm"] = True                     # whatever this run chose: the record names an LM to use
    (run / "weights" / "decode.json").write_text(json.dumps(rec))
    lm = run / "weights" / rec["lm"]
    lm.write_text(lm.read_text().replace("\\end\\", "\n\\end\\"))
    args = ["predict", "--shards", shards, "--weights", run / "weights", "--results", tmp_path / "r",
            "--beam-width", "2", "--workers", "0", "--quiet"]
    assert_one_line_error(cli(*args, ok=False), str(lm), "changed since it was chosen", "--no-lm")
    lm.unlink()
    assert_one_line_error(cli(*args, ok=False), str(lm), "missing", "evaluate --tune")
    assert not (tmp_path / "r" / "submission.csv").exists()
    cli(*args, "--no-lm")                    # the way out the message names
    (run / "weights" / "decode.json").write_text("{not json")
    assert_one_line_error(cli(*args, ok=False), "decode.json", "damaged")


def test_predict_with_an_lm_and_no_weights_is_one_line(fast, chosen, tmp_path):
    _, shards = fast
    lm = tmp_path / "other.arpa"
    shutil.copyfile(chosen / "weights" / "phones-4gram.arpa", lm)
    res = cli("predict", "--shards", shards, "--weights", chosen / "weights", "--results", tmp_path, "--lm", lm,
              "--quiet", ok=False)
    assert_one_line_error(res, "--alpha and --beta", "evaluate --tune")
    res = cli("predict", "--shards", shards, "--weights", chosen / "weights", "--lm", lm, "--no-lm", ok=False)
    assert res.exit_code == 2 and "contradict" in res.output


def test_best_checkpoint_says_which_weights_it_holds(chosen):
    """Every epoch scores the trained and the averaged weights on dev; best.pt holds the better of
    the best epoch, and says whether they are the average."""
    rows = metrics(chosen)
    assert all(r["dev_distance_averaged"] is not None for r in rows)
    scores = [min(r["dev_distance"], r["dev_distance_averaged"]) for r in rows]
    best = rows[scores.index(min(scores))]
    ck = Checkpoint.load(chosen / "weights" / "best.pt")
    assert ck.epoch == best["epoch"]
    assert ck.averaged == (best["dev_distance_averaged"] < best["dev_distance"])
    last = Checkpoint.load(chosen / "weights" / "last.pt")
    assert not last.averaged and last.average["updates"] == last.global_step
    held = last.average["model"] if ck.averaged else None
    if held is not None and ck.epoch == last.epoch:
        assert all((ck.model[k] == held[k]).all() for k in held)


def test_transcribe_decodes_as_predict_does(fast, chosen, tmp_path):
    """transcribe takes decode.json's choice too: a test file's line is its submission row, with
    the LM and with --no-lm."""
    from pipeline import manifest as mf
    data, shards = fast
    m = mf.load(shards, TEST)
    first = m.ids[list(m.index).index(0)]
    npy = data / TEST / "mfcc" / f"{first}.npy"
    for extra in ((), ("--no-lm",)):
        _, rows, _ = _predict(shards, chosen, tmp_path / "-".join(extra or ("lm",)), *extra)
        out = cli("transcribe", "--weights", chosen / "weights", "--beam-width", "4", *extra, npy).output
        assert out.splitlines()[0].split("\t") == [npy.name, rows[0][1]]


def test_a_new_run_drops_the_older_choice_and_a_stale_one_is_said(fast, chosen, tmp_path):
    """decode.json belongs to the weights it was chosen with: a fresh run in the folder removes it,
    and one whose best.pt changed since says so where it is used."""
    _, shards = fast
    run = _copy(chosen, tmp_path)
    rec = json.loads((run / "weights" / "decode.json").read_text())
    rec["use_lm"], rec["checkpoint_sha256"] = True, "0" * 64          # best.pt is not the one it was chosen for
    (run / "weights" / "decode.json").write_text(json.dumps(rec))
    out, _, made = _predict(shards, run, tmp_path / "p")
    assert "chosen for an earlier best.pt" in out and "chosen for an earlier best.pt" in made["lm_from"]
    log = cli(*train_args(shards, run, "--epochs", "1")).output          # a new run, without the choice
    assert "removed" in log and not (run / "weights" / "decode.json").exists()
