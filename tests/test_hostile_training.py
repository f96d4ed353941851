"""Hostile and damaged inputs to stage 2 (train, predict, evaluate): planted checkpoints, splits
with no utterances, utterances too short for the model's downsampling, a resume on re-normalized
shards and folders that cannot be written. Each ends in one clear line (or a reported,
deliberate omission), never in silently wrong work.

Cases of the issue "hostile and damaged inputs": 2 (code in a checkpoint), 7 (empty dev split),
14 (CTC-infeasible after downsampling), and also-cases a (resume on other statistics), b
(unwritable output folders), c (empty test split at predict).
"""

from __future__ import annotations

import functools
import json
import os
import random
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import manifest as mf
from pipeline.vocab import VOCAB, ctc_min_frames
from tests import helpers
from tests.helpers import (DEV, TEST, TRAIN, assert_one_line_error, cli, decode_args, make_weights, metrics,
                           train_and_stop, train_config)
from training import inference as tinf
from training import loop as tloop
from training.checkpoint import Checkpoint
from training.data import without_shards
from training.model import Model, preset_config
from training.plan import BatchOptions, plan_epoch

MAX_FRAMES = helpers.MAX_FRAMES
N_NORMAL = 24                                  # learnable training utterances of the `good` corpus
SHORT = [f"short-{i}" for i in range(3)]       # 10 frames, 10 labels: feasible only without downsampling
SHORT_LABELS = ["AA", "B", "K", "IY", "S", "T", "UW", "M", "N", "ER"]     # no adjacent repeats
LR = 0.003
train_args = functools.partial(helpers.train_args, lr=LR)

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------ corpora

def write_corpus(pipe, data: Path, counts: dict, bad_splits=(), short=0) -> None:
    """helpers.write_corpus with `short` of the 10-frame/10-label SHORT training utterances."""
    helpers.write_corpus(pipe, data, counts, bad_splits=bad_splits, short=SHORT[:short], short_labels=SHORT_LABELS)


@pytest.fixture(scope="module")
def good(pipe, tmp_path_factory):
    """(shards, best.pt): 24 normal + 3 short training utterances, 4 dev, 4 unlabelled test; read-only."""
    root = tmp_path_factory.mktemp("hostile_good")
    write_corpus(pipe, root / "data", {TRAIN: N_NORMAL, DEV: 4, TEST: 4}, short=3)
    pipe.build(root / "data", root / "shards", min_shards=3)
    return root / "shards", make_weights(root / "shards", root / "best.pt")


@pytest.fixture(scope="module")
def hostile(pipe, tmp_path_factory):
    """(shards, best.pt): 12 training utterances, a dev split whose 4 files are all rejected and a
    test split without any input; read-only."""
    root = tmp_path_factory.mktemp("hostile_bad")
    write_corpus(pipe, root / "data", {TRAIN: 12, DEV: 4, TEST: 0}, bad_splits=(DEV,))
    pipe.build(root / "data", root / "shards", min_shards=2)
    m = mf.load(root / "shards", DEV)
    assert (m.num_utterances, m.inputs, m.rejected) == (0, 4, 4)
    assert (mf.load(root / "shards", TEST).num_utterances, mf.load(root / "shards", TEST).inputs) == (0, 0)
    return root / "shards", make_weights(root / "shards", root / "best.pt")


# ------------------------------------------------------------------------------------ helpers

def load_trusted(path: Path) -> dict:
    """A file this test wrote itself: plain torch.load."""
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture
def steps(monkeypatch) -> list:
    """Manifest rows of every training step's loss (not the dev evaluation's): [] means no step ran."""
    real = tloop.ctc_sum
    seen: list = []

    def spy(lp, out_lens, batch):
        if torch.is_grad_enabled():
            seen.append(batch.rows.tolist())
        return real(lp, out_lens, batch)

    monkeypatch.setattr(tloop, "ctc_sum", spy)
    return seen


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Calls of training.inference.decode_split: [] means no decoding was started."""
    real = tinf.decode_split
    calls: list = []

    def spy(loaded, m, *a, **k):
        calls.append(m.split)
        return real(loaded, m, *a, **k)

    monkeypatch.setattr(tinf, "decode_split", spy)
    return calls


class Planted:
    """Unpickling it runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def plant(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": Planted(marker), "model_config": {}, "vocab": list(VOCAB), "stats": {}}, path)
    return path


# ------------------------------------------------------------------ case 2: code in a checkpoint

def test_case2_planted_best_pt_is_refused_by_predict_before_it_runs(good, tmp_path):
    shards, _ = good
    marker = tmp_path / "pwned"
    best = plant(tmp_path / "weights" / "best.pt", marker)
    res = cli(*decode_args("predict", shards, tmp_path / "weights", tmp_path / "results"), ok=False)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert_one_line_error(res, best, "refuses to load: it holds code", "system",
                          "only plain checkpoints written by phonerec load")
    assert not (tmp_path / "results" / "submission.csv").exists()
    # The payload is live: an unguarded load would have run it.
    load_trusted(best)
    assert marker.exists()


def test_case2_planted_last_pt_is_refused_by_resume_before_it_runs(good, tmp_path, steps):
    shards, _ = good
    marker = tmp_path / "pwned"
    last = plant(tmp_path / "weights" / "last.pt", marker)
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--resume"), ok=False)
    assert not marker.exists(), "loading the checkpoint ran its code"
    assert_one_line_error(res, last, "refuses to load: it holds code", "system")
    assert steps == []


def test_case2_checkpoints_hold_only_plain_data(good, tmp_path):
    """What a run writes loads with weights_only=True and nothing admitted beyond torch's defaults."""
    shards, _ = good
    train_and_stop(train_config(shards, tmp_path, epochs=1, lr=LR), after=2)
    state = torch.load(tmp_path / "weights" / "last.pt", map_location="cpu", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)
    assert isinstance(state["rng"][0]["numpy"][1], list)


def old_rng_layout(rng: list[dict]) -> list[dict]:
    """The same RNG states with numpy's as np.random.get_state() returns it (checkpoints before the fix)."""
    old = []
    for r in rng:
        name, keys, pos, has_gauss, cached = r["numpy"]
        old.append({**r, "numpy": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)})
    return old


def test_case2_old_checkpoint_with_numpy_rng_state_still_loads(good, tmp_path):
    """Old checkpoints (a numpy array in the RNG state) load: predict with one, and a resume from one
    continues exactly as from the new layout. (Regression guard: passes before the fix too.)"""
    shards, _ = good
    model = Model(preset_config("model1"))
    np.random.seed(3)
    old = tmp_path / "old" / "best.pt"
    Checkpoint(model=model.state_dict(), model_config=model.config.to_dict(), vocab=list(VOCAB),
               stats=mf.load(shards, TRAIN).stats.to_json(),
               rng=[{"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                     "cuda": None}]).save(old)
    res = cli(*decode_args("predict", shards, old, tmp_path / "results"))
    assert "wrote" in res.output and (tmp_path / "results" / "submission.csv").exists()
    assert Checkpoint.load(old).rng[0]["numpy"][1].dtype == np.uint32

    a, b = tmp_path / "a", tmp_path / "b"
    train_and_stop(train_config(shards, a, epochs=1, dev="", lr=LR), after=2)
    shutil.copytree(a, b)
    ck = Checkpoint.load(a / "weights" / "last.pt")
    ck.rng = old_rng_layout(ck.rng)
    ck.save(b / "weights" / "last.pt")
    for run in (a, b):
        cli(*train_args(shards, run, "--epochs", "1", "--dev", "", "--resume"))
    sa, sb = (Checkpoint.load(r / "weights" / "last.pt") for r in (a, b))
    assert sa.epoch == sb.epoch == 1
    for k in sa.model:
        assert torch.equal(sa.model[k], sb.model[k]), k
    [ra], [rb] = sa.rng, sb.rng
    assert torch.equal(ra["torch"], rb["torch"]) and ra["python"] == rb["python"]
    assert [np.asarray(x).tolist() for x in ra["numpy"]] == [np.asarray(x).tolist() for x in rb["numpy"]]


# ------------------------------------------------------------------ case 7: dev split without utterances

def test_case7_all_rejected_dev_split_stops_training_before_step_1(hostile, tmp_path, steps):
    shards, _ = hostile
    res = cli(*train_args(shards, tmp_path, "--epochs", "2"), ok=False)
    line = assert_one_line_error(res)
    assert line == (f"Error: dev split {DEV} has no utterances (4 inputs, all rejected: see "
                    f"{shards / 'rejected.tsv'}); fix it or train without one: --dev ''")
    assert steps == [] and not (tmp_path / "weights" / "last.pt").exists() and metrics(tmp_path) == []


def test_case7_without_dev_best_pt_is_the_last_epoch(hostile, tmp_path):
    """(Holds before the fix too: checked here so it keeps holding.)"""
    shards, _ = hostile
    res = cli(*train_args(shards, tmp_path, "--epochs", "2", "--dev", ""))
    assert "no dev split" in res.output
    w = tmp_path / "weights"
    assert (w / "best.pt").read_bytes() == (w / "last.pt").read_bytes()
    assert Checkpoint.load(w / "best.pt").epoch == 2


def test_case7_evaluate_on_split_without_utterances_is_one_line(hostile, tmp_path, decodes):
    shards, weights = hostile
    res = cli(*decode_args("evaluate", shards, weights, tmp_path / "results", "--split", DEV), ok=False)
    assert_one_line_error(res, f"split {DEV} has no utterances (4 inputs, all rejected: see "
                               f"{shards / 'rejected.tsv'})", "nothing to evaluate")
    assert "distance" not in res.output.replace("a distance of 0 would mean nothing", "")
    assert decodes == [] and not (tmp_path / "results" / f"evaluate-{DEV}.json").exists()


# ------------------------------------------------------------------ case 14: too short after downsampling

def test_case14_manifest_records_ctc_lens(pipe, tmp_path):
    """ctc_len = labels + adjacent repeats, per utterance; kept through merge and dropped shards;
    a manifest without it (older) loads with None."""
    data = tmp_path / "data"
    write_corpus(pipe, data, {TRAIN: 6, "train-other": 4})
    rng = np.random.default_rng(5)
    repeats = {"rep-1": ["AA", "AA", "B"], "rep-2": ["K", "K", "K", "IY", "IY"], "rep-3": ["S"]}
    for uid, syms in repeats.items():
        pipe.write_utterance(data, TRAIN, uid, pipe.random_feats(rng, 40), ["[SOS]", *syms, "[EOS]"])
    pipe.build(data, tmp_path / "s", train=f"{TRAIN},train-other", dev="", test="", min_shards=3)
    m = mf.load(tmp_path / "s", TRAIN)
    assert m.ctc_lens is not None and m.ctc_lens.dtype == np.int64
    for r, uid in enumerate(m.ids):
        assert m.ctc_lens[r] == ctc_min_frames(pipe.raw_labels(data, TRAIN, uid)), uid
    assert {uid: int(m.ctc_lens[m.ids.index(uid)]) for uid in repeats} == {"rep-1": 4, "rep-2": 8, "rep-3": 1}
    both = mf.load_many(tmp_path / "s", f"{TRAIN},train-other")
    assert len(both.ctc_lens) == both.num_utterances and list(both.ctc_lens[:m.num_utterances]) == list(m.ctc_lens)
    kept = without_shards(m, [0])
    assert list(kept.ctc_lens) == list(m.ctc_lens[m.shard_start[1]:])

    path = tmp_path / "s" / TRAIN / "manifest.json"
    raw = json.loads(path.read_text())
    raw["utterances"].pop("ctc_len")
    raw.pop("digest", None)                      # a manifest written before both
    path.write_text(json.dumps(raw))
    assert mf.load(tmp_path / "s", TRAIN).ctc_lens is None


def test_case14_plan_with_exclusion_mask(good):
    shards, _ = good
    m = mf.load(shards, TRAIN)
    opts = BatchOptions(max_frames=MAX_FRAMES)
    rng = np.random.default_rng(0)
    for world, workers in ((1, 0), (2, 2)):
        for rank in range(world):
            kw = dict(seed=1, epoch=3, rank=rank, world=world, workers=workers, opts=opts)
            base = plan_epoch(m, **kw)
            same = plan_epoch(m, **kw, exclude=np.zeros(m.num_utterances, dtype=bool))
            assert [b.tolist() for b in same.sequence()] == [b.tolist() for b in base.sequence()]
            assert (same.steps, same.quotas, same.dropped_utterances) == (base.steps, base.quotas,
                                                                          base.dropped_utterances)
            mask = rng.random(m.num_utterances) < 0.3
            cut = plan_epoch(m, **kw, exclude=mask)
            rows = [r for b in cut.sequence() for r in b.tolist()]
            assert rows and not mask[rows].any()
            if world == 1:                           # nothing dropped to balance ranks: every other row, once
                assert sorted(rows) == sorted(np.flatnonzero(~mask).tolist())
            ev = plan_epoch(m, **kw, exclude=mask, shuffle=False, balance=False)
            assert not mask[[r for b in ev.sequence() for r in b.tolist()]].any()


def test_case14_default_preset_leaves_out_utterances_too_short_for_its_downsampling(good, tmp_path, steps):
    shards, _ = good
    m = mf.load(shards, TRAIN)
    short_rows = {m.ids.index(u) for u in SHORT}
    assert all(m.frames[r] == 10 and m.ctc_lens[r] == 10 for r in short_rows)   # stage 1 lets them through
    # The training split is also the dev split here: its short utterances are still scored there.
    res = cli(*train_args(shards, tmp_path, "--epochs", "2", "--dev", TRAIN, preset="default"))
    lines = [ln for ln in res.output.splitlines() if "too short" in ln]
    assert len(lines) == 2, res.output
    assert lines[0].startswith("3 training utterance(s) too short for the model's ×2 downsampling left out (e.g. ")
    assert lines[1].startswith("3 dev utterance(s) too short for the model's ×2 downsampling: still scored")
    for line in lines:
        assert any(line.endswith(f"(e.g. {u}: 10 frames -> 5, needs 10)") for u in SHORT), line
    trained = {r for rows in steps for r in rows}
    assert trained == set(range(m.num_utterances)) - short_rows
    rows = metrics(tmp_path)
    assert [(r["ctc_infeasible"], r["utterances"]) for r in rows] == [(3, N_NORMAL)] * 2
    state = Checkpoint.load(tmp_path / "weights" / "last.pt")
    assert state.ctc_infeasible == 3 and sorted(state.ctc_infeasible_ids) == SHORT


def test_case14_model1_without_downsampling_leaves_none_out(good, tmp_path, steps):
    shards, _ = good
    m = mf.load(shards, TRAIN)
    res = cli(*train_args(shards, tmp_path, "--epochs", "1", "--dev", TRAIN))
    assert "too short" not in res.output
    assert {r for rows in steps for r in rows} == set(range(m.num_utterances))
    [row] = metrics(tmp_path)
    assert row["ctc_infeasible"] == 0 and row["utterances"] == N_NORMAL + 3


# ------------------------------------------------------------------ also (a): resume on other statistics

def test_also_a_resume_on_shards_with_other_statistics_is_refused(pipe, good, tmp_path, steps):
    shards, _ = good
    other = tmp_path / "other"
    data = tmp_path / "data"
    write_corpus(pipe, data, {TRAIN: N_NORMAL, DEV: 4, TEST: 4}, short=3)
    pipe.build(data, other, min_shards=3, cmn=True)          # same corpus, re-normalized (per-utterance CMN)
    assert mf.load(other, TRAIN).stats.fingerprint != mf.load(shards, TRAIN).stats.fingerprint
    train_and_stop(train_config(shards, tmp_path, epochs=1, lr=LR), after=1)
    steps.clear()
    res = cli(*train_args(other, tmp_path, "--epochs", "1", "--resume"), ok=False)
    assert_one_line_error(res, f"{tmp_path / 'weights' / 'last.pt'} was trained on features normalized with other "
                               f"statistics (from ['{TRAIN}']) than the shards in {other}; train from scratch "
                               "(drop --resume) or use the shards it was trained with")
    assert steps == []


# ------------------------------------------------------------------ also (b): folders that cannot be written

@pytest.fixture
def readonly_dir(tmp_path):
    """A really read-only folder: a tmpfs mounted ro (needs mount permission; skipped otherwise)."""
    d = tmp_path / "ro"
    d.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(d)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {res.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], capture_output=True)


def unwritable(kind: str, tmp_path: Path, request) -> Path:
    if kind == "under_a_file":
        (tmp_path / "plain-file").write_text("not a folder\n")
        return tmp_path / "plain-file" / "results"
    if kind == "chmod":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod does not stop root from writing")
        d = tmp_path / "locked"
        d.mkdir()
        d.chmod(0o555)
        request.addfinalizer(lambda: d.chmod(0o755))
        return d
    return request.getfixturevalue("readonly_dir")


@pytest.mark.parametrize("kind", ["under_a_file", "chmod", "readonly_mount"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_also_b_unwritable_results_fail_before_decoding(good, tmp_path, request, decodes, command, kind):
    shards, weights = good
    results = unwritable(kind, tmp_path, request)
    split = TEST if command == "predict" else DEV
    res = cli(*decode_args(command, shards, weights, results, "--split", split), ok=False)
    assert_one_line_error(res, f"cannot write to the folder {results}")
    assert decodes == []


@pytest.mark.parametrize("kind", ["under_a_file", "chmod", "readonly_mount"])
@pytest.mark.parametrize("which", ["weights", "results"])
def test_also_b_unwritable_train_folders_fail_before_step_1(good, tmp_path, request, steps, which, kind):
    shards, _ = good
    bad = unwritable(kind, tmp_path, request)
    args = train_args(shards, tmp_path, "--epochs", "1", "--dev", "")
    args[args.index(f"--{which}") + 1] = bad
    res = cli(*args, ok=False)
    assert_one_line_error(res, f"cannot write to the folder {bad}")
    assert steps == []


# ------------------------------------------------------------------ also (c): empty test split at predict

def test_also_c_predict_on_empty_test_split_warns(hostile, tmp_path):
    shards, weights = hostile
    res = cli(*decode_args("predict", shards, weights, tmp_path / "results"))
    assert f"warning: split {TEST} has no utterances: the submission has 0 rows" in res.stderr
    assert (tmp_path / "results" / "submission.csv").read_text() == "index,label\n"
