"""Config-shaped inputs, ARPA files, option values and decoder inputs are untrusted: recipes and
--set values, a checkpoint's stored config, decode.json, ARPA numbers and sizes, FIFOs and
over-long inputs each end in one line naming the file or option (exit 1, or 2 for a usage error),
with nothing allocated beyond what the file claims and this machine has."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from decoding.lm import ArpaError, dense, read_arpa
from pipeline.strict import DocumentError, parse
from tests.helpers import assert_one_line_error, assert_usage_error, cli, make_weights
from training.checkpoint import Checkpoint, CheckpointError, check_file
from training.config import TrainConfig, train_config
from training.model import ModelTooLarge, check_fits, preset_config
from training.tuning import DecodeRecordError, read_record

# ------------------------------------------------------------------------------- recipes

BAD_RECIPES = [   # (file name, text, words of the one line)
    ("syntax.yaml", "lr: [1\n", ["syntax.yaml:2", "invalid YAML"]),
    ("tag.yaml", "seed: !!python/object/apply:os.system ['true']\n", ["tag.yaml:1", "python/object"]),
    ("width.yaml", "model:\n  lstm_hidden: wide\n", ["width.yaml", "lstm_hidden", "not a whole number"]),
    ("e9.yaml", "model:\n  lstm_hidden: 1e9\n", ["e9.yaml", "lstm_hidden", "not a whole number"]),
    ("list.yaml", "model:\n  lstm_hidden: [1, 2]\n", ["list.yaml", "lstm_hidden"]),
    ("intkey.yaml", "1: 2\n", ["intkey.yaml", "key 1 is not a name"]),
    ("deep.json", "[" * 200_000 + "]" * 200_000, ["deep.json", "nested too deeply"]),
    ("deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n", ["deep.yaml", "nested too deeply"]),
    ("nan.yaml", "time_budget: .nan\n", ["nan.yaml", "time_budget", "not a"]),
    ("inf.yaml", "lr: .inf\n", ["inf.yaml", "lr", "not a finite number"]),
    ("dup.yaml", "seed: 1\nseed: 2\n", ["dup.yaml:2", "duplicate key 'seed' (first on line 1)"]),
    ("dup.json", '{"seed": 1, "seed": 2}', ["dup.json", "duplicate key 'seed'"]),
    ("latin.yaml", b"seed: 1\nresults: \xe9t\xe9\n", ["latin.yaml:2", "not UTF-8"]),
    ("off.yaml", 'tensorboard: "off"\n', ["off.yaml", "tensorboard", "not true or false"]),
    ("false.yaml", 'spec_augment: "false"\n', ["false.yaml", "spec_augment", "not true or false"]),
    ("no.yaml", 'amp: "no"\n', ["no.yaml", "amp", "not true or false"]),
    ("model.yaml", "model: [1, 2]\n", ["model.yaml", "model", "not a mapping"]),
    ("seed.yaml", "seed: 1.5\n", ["seed.yaml", "seed", "not a whole number"]),
    ("huge.yaml", "model:\n  lstm_hidden: 1000000000\n", ["huge.yaml", "GB", "parameters", "this machine has"]),
    ("wide.yaml", "model:\n  lstm_hidden: 30000\n", ["wide.yaml", "GB", "parameters", "this machine has"]),
]


@pytest.mark.parametrize("name,text,words", BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_a_bad_recipe_is_one_line_naming_it(tmp_path, name, text, words):
    """Each of these was a traceback (yaml's, TypeError, RecursionError, an allocator's) or was
    accepted (nan, a duplicate key, "off" as true); now one line naming the file, before any work."""
    recipe = tmp_path / name
    recipe.write_bytes(text if isinstance(text, bytes) else text.encode())
    res = cli("train", "--config", recipe, "--shards", tmp_path / "none", "--weights", tmp_path / "w",
              "--results", tmp_path / "r", ok=False)
    assert_usage_error(res, *words)                   # exit status 2, as for any command's bad value
    assert not (tmp_path / "w").exists()


def test_a_recipe_reads_2e_3_as_a_number(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 2e-3\nweight_decay: 1E-2\nmodel:\n  lstm_dropout: 1e-1\n  lstm_layers: 2\n")
    cfg = train_config(recipe, {}, set(), {})
    assert (cfg.lr, cfg.weight_decay, cfg.model["lstm_dropout"]) == (0.002, 0.01, 0.1)


@pytest.mark.parametrize("value,words", [("lstm_hidden=[1", ["--set", "lstm_hidden", "invalid YAML"]),
                                         ("=3", ["--set", "expected KEY=VALUE"])])
def test_a_bad_set_value_is_a_usage_error(tmp_path, value, words):
    res = cli("train", "--set", value, "--shards", tmp_path, ok=False)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert all(w in res.output for w in words), res.output


@pytest.mark.parametrize("value,words", [("lstm_hidden=wide", ["lstm_hidden", "not a whole number"]),
                                         ("conv_channels=[a]", ["conv_channels", "item 'a'"]),
                                         ("lstm_hidden=100000", ["GB", "parameters"])])
def test_a_set_value_of_the_wrong_type_or_size_is_one_line(tmp_path, value, words):
    res = cli("train", "--set", value, "--shards", tmp_path / "none", "--weights", tmp_path / "w", ok=False)
    assert_usage_error(res, *words)


def test_a_model_too_large_for_the_machine_is_refused_from_its_size():
    """Counted without allocating (meta device, or the LSTM's own size past int64): the figure."""
    with pytest.raises(ModelTooLarge, match=r"would need [\d.]+ GB \(at least [\d,]+ parameters\), more than"):
        check_fits(preset_config("default", lstm_hidden=10**9), training=True)
    params = check_fits(preset_config("default"), training=True)
    with pytest.raises(ModelTooLarge, match=f"{params:,} parameters and a first batch of 48,000 frames"):
        check_fits(preset_config("default"), training=True, frames=48_000, memory=16 * params + 1)


# --------------------------------------------------------------------- checkpoints' config

@pytest.mark.parametrize("change,words", [({"time_budget": math.nan}, ["time_budget", "not a"]),
                                          ({"preset": "bogus"}, ["preset", "'bogus' is not one of"]),
                                          ({"tensorboard": "off"}, ["tensorboard", "not true or false"]),
                                          ({"seed": "3"}, ["seed", "not a whole number"])])
def test_a_checkpoints_config_is_checked_as_a_recipe_is(change, words):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_checkpoint({**TrainConfig().to_dict(), **change})
    assert all(w in str(info.value) for w in words), info.value
    assert TrainConfig.from_checkpoint({"workers": 640, "retired": 1}).workers == 640   # the plan stays pinned


def test_resume_from_a_checkpoint_with_a_nan_time_budget_is_one_line(trained, tiny_shards, tmp_path):
    weights = shutil.copytree(trained, tmp_path / "w")
    state = torch.load(weights / "last.pt", map_location="cpu", weights_only=False)     # this test's own file
    state["config"]["time_budget"] = math.nan
    torch.save(state, weights / "last.pt")
    res = cli("train", "--shards", tiny_shards, "--weights", weights, "--results", tmp_path / "r", "--resume",
              "--preset", "model1", "--workers", "0", "--quiet", ok=False)
    assert_one_line_error(res, str(weights / "last.pt"), "time_budget", "drop --resume")


def _damaged(state: dict, what: str) -> None:
    if what == "string width":
        state["model_config"]["lstm_hidden"] = "128"
    elif what == "model config list":
        state["model_config"] = [1, 2]
    elif what == "missing tensor":
        state["model"].pop(next(iter(state["model"])))
    elif what == "wrong shape":
        key = next(k for k, v in state["model"].items() if v.ndim == 2)
        state["model"][key] = torch.zeros(3, 3)
    elif what == "stats list":
        state["stats"] = [1, 2, 3]
    elif what == "stats short":
        state["stats"]["mean"] = [0.0]
    elif what == "model not a dict":
        state["model"] = "weights"


@pytest.mark.parametrize("what", ["string width", "model config list", "missing tensor", "wrong shape",
                                  "stats list", "stats short", "model not a dict"])
def test_a_damaged_checkpoint_is_one_line_in_transcribe(tiny_shards, tmp_path, what):
    """These were tracebacks (TypeError, AttributeError, load_state_dict's RuntimeError)."""
    path = make_weights(tiny_shards, tmp_path / "best.pt")
    state = torch.load(path, map_location="cpu", weights_only=False)
    _damaged(state, what)
    torch.save(state, path)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((50, 15), np.float32))
    assert_one_line_error(cli("transcribe", "--weights", path, "--beam-width", "0", x, ok=False), str(path))


def test_a_zip_bomb_checkpoint_is_refused_from_its_directory(tmp_path):
    """A small file whose compressed entry inflates to 200 MB: refused before anything is inflated."""
    path = tmp_path / "last.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * 200_000_000)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(CheckpointError, match=r"claims 200 MB of contents in a 0\.\d+ MB|claims 200 MB"):
        Checkpoint.load(path)


def test_a_checkpoint_larger_than_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    """`--resume` read all of last.pt first (a 30 GB sparse file: MemoryError)."""
    import training.checkpoint as ckmod
    path = tmp_path / "last.pt"
    with open(path, "wb") as fh:
        fh.truncate(3 * 10**9)                   # sparse: no disk used, nothing read
    monkeypatch.setattr(ckmod, "memory_bytes", lambda: 4 * 10**9)
    with pytest.raises(CheckpointError, match=r"last\.pt is 3\.0 GB, more than this machine's memory \(4\.0 GB\)"):
        check_file(path)
    res = cli("train", "--shards", tmp_path / "none", "--weights", tmp_path, "--results", tmp_path / "r",
              "--resume", "--preset", "model1", "--workers", "0", ok=False)
    assert_one_line_error(res, "3.0 GB", "memory")


def test_the_loaders_batch_slots_are_bounded_by_shared_memory(tiny_shards, monkeypatch):
    """Slots grow with the square of the workers (a checkpoint's 64: 9.8 GB): past half the free
    shared memory the loader hands batches over one buffer each."""
    import training.data as tdata
    from pipeline import manifest as mf
    from training.plan import plan_epoch
    m = mf.load(tiny_shards, "train-clean-100")
    plan = plan_epoch(m, seed=0, epoch=0, workers=4)
    ring = tdata.make_ring(m, plan, 4)
    assert ring is not None and ring.shape[:2] == (4, 18)
    monkeypatch.setattr(tdata, "shared_memory_bytes", lambda: ring.numel())     # twice what fits
    assert tdata.make_ring(m, plan, 4) is None


# ------------------------------------------------------------------------------- decode.json

@pytest.mark.parametrize("text,words", [('{"alpha": 1, "alpha": 2}', ["decode.json", "duplicate key 'alpha'"]),
                                        ("USE", ["decode.json", "use_lm", "not true or false"]),
                                        ("SPLIT", ["decode.json", "split", "not a string"])])
def test_a_decode_record_is_read_strictly(tmp_path, text, words):
    good = {"checkpoint": "best.pt", "checkpoint_sha256": "0", "split": "dev", "utterances": 1, "beam_width": 2,
            "greedy_per": 0.5, "beam_per": 0.4, "lm": "x.arpa", "lm_sha256": "0", "lm_per": 0.3, "alpha": 0.5,
            "beta": 1.0, "use_lm": True}
    (tmp_path / "decode.json").write_text(json.dumps(good))
    assert read_record(tmp_path).use_lm is True
    text = {"USE": json.dumps({**good, "use_lm": "false"}), "SPLIT": json.dumps({**good, "split": ["dev"]})}.get(
        text, text)
    (tmp_path / "decode.json").write_text(text)
    with pytest.raises(DecodeRecordError) as info:
        read_record(tmp_path)
    assert all(w in str(info.value) for w in words) and "\n" not in str(info.value), info.value


# ------------------------------------------------------------------------------------ ARPA

ARPA = ["\\data\\", "ngram 1=4", "ngram 2=2", "", "\\1-grams:", "-99\t<s>\t-0.3", "-0.5\ta\t-0.2", "-0.6\tb",
        "-0.7\t</s>", "", "\\2-grams:", "-0.1\t<s> a", "-0.2\ta b", "", "\\end\\"]


def _arpa(tmp_path, replace: dict[int, str]) -> Path:
    lines = [replace.get(i, line) for i, line in enumerate(ARPA, 1)]
    path = tmp_path / "lm.arpa"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("replace,line,phrase", [
    ({2: "ngram 1=" + "9" * 5000}, 2, "over 12 digits"),
    ({2: "ngram " + "1" * 5000 + "=4"}, 2, "over 12 digits"),
    ({3: "ngram 7=2"}, 3, "beyond the highest order read (6)"),
    ({15: "\\" + "3" * 5000 + "-grams:"}, 15, "expected \\end\\ here"),
    ({7: "-0.5\ta\t1e300"}, 7, "backoff weight '1e300' is out of range"),
    ({7: "-1e300\ta\t-0.2"}, 7, "log10 probability '-1e300' is out of range"),
    ({3: "ngram 2=2000000"}, 3, "declare 2000004 n-grams, more than a file of"),
    ({2: "ngram 0=4"}, 2, "no order"),
])
def test_arpa_numbers_are_bounded(tmp_path, replace, line, phrase):
    """A 5,000-digit number was int()'s ValueError traceback; ±1e300 overflowed the float32 table to
    ±inf and decoding went on with garbage."""
    path = _arpa(tmp_path, replace)
    with pytest.raises(ArpaError) as info:
        read_arpa(path)
    assert str(info.value).startswith(f"{path}:{line}: ") and phrase in str(info.value), info.value


def test_arpa_counts_are_bounded_by_memory_before_reading(tmp_path):
    with pytest.raises(ArpaError, match=r"lm\.arpa:3: the counts declare 6 n-grams, which would take about"):
        read_arpa(_arpa(tmp_path, {}), memory=4000)
    table = dense(read_arpa(_arpa(tmp_path, {})), ("", "a", "b")).table
    assert torch.isfinite(table).all()


def test_reading_an_arpa_file_holds_a_few_times_its_size(tmp_path):
    """It took ~40x (a 32 MB file peaked at 1.5 GB): the text, its lines and a line number per
    n-gram; now the lines are streamed and only the model is kept."""
    syms = [f"p{i}" for i in range(30)]
    bi = [(a, b) for a in syms for b in syms]
    path = tmp_path / "big.arpa"
    with open(path, "w") as fh:
        fh.write(f"\\data\\\nngram 1={len(syms) + 2}\nngram 2={len(bi)}\nngram 3={len(bi) * 20}\n\n\\1-grams:\n")
        fh.writelines(f"-1.5\t{w}\t-0.3\n" for w in [*syms, "</s>"])
        fh.write("-99\t<s>\t-0.3\n\n\\2-grams:\n")
        fh.writelines(f"-1.2\t{a} {b}\t-0.1\n" for a, b in bi)
        fh.write("\n\\3-grams:\n")
        fh.writelines(f"-1.1\t{a} {b} {c}\n" for a, b in bi for c in syms[:20])
        fh.write("\n\\end\\\n")
    tracemalloc.start()
    try:
        read_arpa(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12 * path.stat().st_size, peak / path.stat().st_size


# ---------------------------------------------------------------------------- decoder inputs

@pytest.mark.parametrize("name", ["voice.wav", "feats.npy", "plain"])
def test_a_fifo_is_refused_before_it_is_opened_whatever_its_name(tiny_shards, tmp_path, name):
    """A FIFO named .wav that nobody wrote to hung transcribe forever. (A watchdog writes to it
    after 20 s so that a regression fails instead of hanging.)"""
    weights = make_weights(tiny_shards, tmp_path / "best.pt")
    fifo = tmp_path / name
    os.mkfifo(fifo)
    done = threading.Event()

    def unblock():
        if not done.wait(20):
            with open(fifo, "wb"):
                pass
    threading.Thread(target=unblock, daemon=True).start()
    try:
        res = cli("transcribe", "--weights", weights, "--beam-width", "0", fifo, ok=False)
    finally:
        done.set()
    assert_one_line_error(res, name, "not a regular file")


def test_an_over_long_input_is_refused_from_its_header(tiny_shards, tmp_path):
    """A 2,000,000-frame .npy asked for 8.3 GB at once: now refused from its header (a sparse
    file: its 120 MB of frames are never read)."""
    weights = make_weights(tiny_shards, tmp_path / "best.pt")
    path = tmp_path / "long.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (2_000_000, 15)})
        fh.truncate(fh.tell() + 2_000_000 * 15 * 4)
    res = cli("transcribe", "--weights", weights, "--beam-width", "0", path, ok=False)
    assert_one_line_error(res, "long.npy", "2,000,000 frames", "over transcribe's limit of 180,000", "split it")


# ------------------------------------------------------------------------------ properties

_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                  max_size=3), max_leaves=8)
_KEYS = st.sampled_from([*TrainConfig.__dataclass_fields__, "model", "bogus", "1"])
_MODEL = st.dictionaries(st.sampled_from(["lstm_hidden", "lstm_layers", "conv_channels", "norm", "x"]), _VALUES,
                         max_size=3)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(doc=st.dictionaries(_KEYS, _VALUES | _MODEL, max_size=5), syntax=st.sampled_from(["yaml", "json", "raw"]),
       raw=st.text(max_size=40))
def test_any_recipe_is_a_config_or_one_line(tmp_path_factory, doc, syntax, raw):
    path = tmp_path_factory.mktemp("recipe") / f"r.{'json' if syntax == 'json' else 'yaml'}"
    if syntax == "json":
        path.write_text(json.dumps(doc))
    else:
        path.write_text(raw if syntax == "raw" else yaml.safe_dump(doc))
    try:
        cfg = train_config(path, {}, set(), {})
    except ValueError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), exc
    else:
        assert isinstance(cfg, TrainConfig)


_NUMBERS = st.one_of(st.integers(0, 10**30).map(str), st.just("9" * 5000))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(counts=st.lists(st.tuples(_NUMBERS, _NUMBERS), max_size=3),
       section=st.one_of(st.integers(0, 9).map(lambda n: f"\\{n}-grams:"), st.just("\\" + "3" * 5000 + "-grams:")),
       weight=st.sampled_from(["-0.5", "1e300", "-1e300", "nan", "-inf", "1" * 400, "-99", "0x1", "-1e38"]))
def test_any_arpa_header_is_a_model_or_one_line(tmp_path_factory, counts, section, weight):
    lines = ["\\data\\", *(f"ngram {n}={c}" for n, c in counts), "", section, f"{weight}\ta", "\\end\\"]
    path = tmp_path_factory.mktemp("arpa") / "lm.arpa"
    path.write_text("\n".join(lines) + "\n")
    try:
        read_arpa(path)
    except ArpaError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), exc


def test_set_values_are_parsed_strictly():
    assert parse("[128, 128]", "--set conv_channels") == [128, 128] and parse("2e-3", "--set x") == 0.002
    with pytest.raises(DocumentError, match="--set x:1: invalid YAML"):
        parse("!!python/name:os.system", "--set x")
