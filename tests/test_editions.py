"""Every edition of the task's data (issue: editions): the layout variants the editions use."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import manifest as mf
from pipeline.build import build
from pipeline.shards import ShardOptions
from pipeline.vocab import F22, S24, SYMBOL_INDEX, VOCAB, load_inventory


@pytest.mark.parametrize("folder", ["transcript", "transcript/raw", "transcripts"])
def test_every_transcript_folder_name_pairs_with_mfcc(pipe, tiny_corpus, tmp_path, folder):
    data = pipe.copy_tree(tiny_corpus, tmp_path / "data")
    for split in ("train-clean-100", "dev-clean"):
        src = data / split / "transcript"
        dst = data / split / folder
        tmp = data / split / "moving"
        src.rename(tmp)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dst)
    build(data, tmp_path / "shards", train="train-clean-100", dev="dev-clean", test="test-clean", workers=1,
          progress=False, options=ShardOptions(min_shards=4), log=lambda _m: None)
    for split, n in (("train-clean-100", 60), ("dev-clean", 12)):
        m, per_shard = pipe.read_split(tmp_path / "shards", split)
        assert (m.num_utterances, m.rejected, m.labelled) == (n, 0, True), split
        by_key = dict(zip(m.keys, m.ids))
        for samples in per_shard:
            for key, _, labels in samples:
                syms = [str(x) for x in np.load(data / split / folder / f"{by_key[key]}.npy")]
                assert list(labels) == [SYMBOL_INDEX[x] for x in syms[1:-1]]


# ------------------------------------------------------------------------------ feature width

def width_corpus(root, dim, counts=None):
    from corpora.random import generate
    generate(root, counts or {"train-clean-100": 24, "dev-clean": 6, "test-clean": 5}, seed=11, workers=1,
             progress=False, feature_dim=dim)
    return root


def build_quiet(data, out, **kw):
    lines = []
    build(data, out, train="train-clean-100", dev="dev-clean", test="test-clean", workers=1, progress=False,
          options=ShardOptions(min_shards=3), log=lines.append, **kw)
    return lines


@pytest.mark.parametrize("dim", [13, 15, 27, 28])
def test_stage1_follows_the_data_width(pipe, tmp_path, dim):
    data = width_corpus(tmp_path / "data", dim)
    build_quiet(data, tmp_path / "shards")
    x = pipe.train_matrix(data, ["train-clean-100"])
    stats = mf.load(tmp_path / "shards", "train-clean-100").stats
    assert stats.mean.shape == (dim,)
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-9, atol=1e-9)
    for split, n in (("train-clean-100", 24), ("dev-clean", 6), ("test-clean", 5)):
        m, per_shard = pipe.read_split(tmp_path / "shards", split)
        assert (m.feature_dim, m.num_utterances, m.rejected) == (dim, n, 0)
        by_key = dict(zip(m.keys, m.ids))
        for samples in per_shard:
            for key, f, _ in samples:
                raw = pipe.raw_features(data, split, by_key[key])
                np.testing.assert_allclose(f.astype(np.float32), (raw - stats.mean) / stats.std, atol=2e-2, rtol=2e-3)
    from pipeline.verify import verify
    assert verify(tmp_path / "shards", None, data) == {s: [] for s in ("dev-clean", "test-clean", "train-clean-100")}


def test_one_file_of_another_width_is_rejected_naming_both(pipe, tmp_path):
    data = width_corpus(tmp_path / "data", 28)
    bad = sorted((data / "dev-clean" / "mfcc").glob("*.npy"))[2]
    pipe.write_npy(bad, np.zeros((120, 27), np.float32))
    first = sorted((data / "train-clean-100" / "mfcc").glob("*.npy"))[0]   # the first file is not the width
    pipe.write_npy(first, np.zeros((120, 27), np.float32))
    build_quiet(data, tmp_path / "shards")
    rows = {r["utterance"]: r["reason"] for r in pipe.rejected_rows(tmp_path / "shards")}
    assert set(rows) == {bad.stem, first.stem}
    assert "27 features per frame, the corpus has 28" in rows[bad.stem]
    assert mf.load(tmp_path / "shards", "train-clean-100").num_utterances == 23


def test_no_clear_majority_width_is_one_line(tmp_path):
    from click.testing import CliRunner

    from phonerec.cli import main
    data = width_corpus(tmp_path / "data", 15)
    for p in sorted((data / "train-clean-100" / "mfcc").glob("*.npy"))[:10]:
        np.save(p, np.random.default_rng(0).normal(size=(len(np.load(p)), 27)).astype(np.float32))
    res = CliRunner().invoke(main, ["shards", "--data", str(data), "--shards", str(tmp_path / "s"), "--quiet",
                                    "--workers", "1"])
    assert res.exit_code == 1 and res.output.count("\n") == 1, res.output
    assert "no clear feature width in train-clean-100" in res.output and "15 in 14" in res.output \
        and "27 in 10" in res.output
    res = CliRunner().invoke(main, ["shards", "--data", str(data), "--shards", str(tmp_path / "s"), "--quiet",
                                    "--workers", "1", "--feature-dim", "27", "--min-shards", "2"])
    assert res.exit_code == 0, res.output
    assert mf.load(tmp_path / "s", "train-clean-100").num_utterances == 10


def short_corpus(root, dim, seed=5, relabel=None):
    """Short utterances (60-200 frames) `dim` features wide: 16 train, 4 dev, 5 unlabelled test;
    `relabel` rewrites each (F22-symbol) transcript, e.g. into an S22 table's symbols."""
    from corpora.random import utterance
    for k, (split, n) in enumerate({"train-clean-100": 16, "dev-clean": 4, "test-clean": 5}.items()):
        rng = np.random.default_rng([seed, k])
        for i in range(n):
            x, labels = utterance(seed, k, i, int(rng.integers(60, 200)), dim)
            uid = f"{100 + k}-{2000 + k}-{i:04d}"
            (root / split / "mfcc").mkdir(parents=True, exist_ok=True)
            np.save(root / split / "mfcc" / f"{uid}.npy", x)
            if split != "test-clean":
                (root / split / "transcript").mkdir(parents=True, exist_ok=True)
                np.save(root / split / "transcript" / f"{uid}.npy", np.asarray(relabel(labels) if relabel else labels))
    return root


TEMPLATES = {27: ("random_submission.csv", "id,predictions"), 28: ("transcript/sample_submission.csv", "id,label")}

# Each width's edition and its symbol inventory: 13 an S22-style table of the user's own (a TSV), 15 F22 (the
# default, no option), 27 S23 (`s23`, the alias of s24), 28 S24+.
S22_FILE = "s22.tsv"
EDITION_INVENTORY = {13: S22_FILE, 15: None, 27: "s23", 28: "s24"}
# S22 style: "SIL", then the 39 phonemes alphabetically, then spoken noise (an output no transcript holds);
# its own one-character codes, none of them an F22 code.
S22_SYMBOLS = ["SIL", *sorted(VOCAB[2:-2]), "SPN"]
S22_CODES = "0123456789αβγδεζηθικλμνξοπρστυφχψω!#$%&*+"
S22_FROM_F22 = {"[SOS]": "<sos>", "[EOS]": "<eos>", "[SIL]": "SIL"}


def write_s22_tsv(path):
    lines = ["# an S22-style table: output 1 is SIL (the blank, output 0, is implicit)",
             "#framing\t<sos>\t<eos>", ""]
    lines += [f"{s}\t{c}" + ("\t# spoken noise" if s == "SPN" else "") for s, c in zip(S22_SYMBOLS, S22_CODES)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def to_s22(labels):
    """An F22-symbol transcript (corpora.random.utterance's) in the S22 table's symbols and framing."""
    return [S22_FROM_F22.get(s, s) for s in labels]


def edition_inventory(data, dim):
    """The inventory width `dim`'s run of `width_runs` was built with (data: its data folder)."""
    spec = EDITION_INVENTORY[dim]
    return load_inventory(data.parent / spec if spec == S22_FILE else spec or "f22")


@pytest.fixture(scope="module")
def width_runs(tmp_path_factory):
    """{dim: (data, shards, run)}: shards, a few training steps and a prediction at each width."""
    from tests.helpers import cli, decode_args, train_args
    out = {}
    for dim in (13, 15, 27, 28):
        root = tmp_path_factory.mktemp(f"w{dim}")
        spec = EDITION_INVENTORY[dim]
        if spec == S22_FILE:          # S22 and other editions: the user's own table, transcripts in its symbols
            write_s22_tsv(root / S22_FILE)
            spec = root / S22_FILE
        data = short_corpus(root / "data", dim, relabel=to_s22 if dim == 13 else None)
        if dim in TEMPLATES:          # the editions that ship a template: its header is the submission's
            where, header = TEMPLATES[dim]
            (data / "test-clean" / where).parent.mkdir(parents=True, exist_ok=True)
            (data / "test-clean" / where).write_text(header + "\n" + "".join(f"{i},x\n" for i in range(5)))
        cli("shards", "--data", data, "--shards", root / "shards", "--quiet", "--workers", "1", "--min-shards", "2",
            *(["--inventory", spec] if spec else []))
        run = root / "run"
        cli(*train_args(root / "shards", run, "--epochs", "1", "--max-steps", "3"))
        cli(*decode_args("predict", root / "shards", run / "weights", run / "results"))
        out[dim] = (data, root / "shards", run)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("dim", [13, 15, 27, 28])
def test_every_width_trains_and_predicts_in_order(width_runs, dim):
    import csv
    import torch
    data, shards, run = width_runs[dim]
    ck = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert ck["model_config"]["input_dim"] == dim
    with open(run / "results" / "submission.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    ids = sorted(p.stem for p in (data / "test-clean" / "mfcc").glob("*.npy"))
    header = TEMPLATES[dim][1].split(",") if dim in TEMPLATES else ["index", "label"]
    assert rows[0] == header and [int(r[0]) for r in rows[1:]] == list(range(len(ids)))


@pytest.mark.slow
def test_a_checkpoint_of_one_width_is_refused_on_another(width_runs, tmp_path):
    from tests.helpers import assert_one_line_error, cli, decode_args
    _, shards28, _ = width_runs[28]
    _, _, run27 = width_runs[27]
    res = cli(*decode_args("predict", shards28, run27 / "weights", tmp_path), ok=False)
    assert_one_line_error(res, "trained on 27 features per frame", "have 28")
    x = np.zeros((50, 28), np.float32)
    np.save(tmp_path / "x.npy", x)
    res = cli("transcribe", tmp_path / "x.npy", "--weights", run27 / "weights", ok=False)
    assert_one_line_error(res, "28 features per frame", "has 27")


@pytest.mark.slow
def test_a_template_of_another_size_is_refused_before_decoding(width_runs, tmp_path, monkeypatch):
    import json

    from tests.helpers import assert_one_line_error, cli, decode_args
    _, shards, run = width_runs[27]
    copy = tmp_path / "shards"
    import shutil
    shutil.copytree(shards, copy)
    path = copy / "test-clean" / "manifest.json"
    raw = json.loads(path.read_text())
    raw["template"]["rows"] = 4
    raw.pop("digest")                         # a manifest from an edited template, as a rebuild would write it
    path.write_text(json.dumps(raw))
    import training.inference as inference
    monkeypatch.setattr(inference, "decode_split", lambda *a, **k: pytest.fail("decoded"))
    res = cli(*decode_args("predict", copy, run / "weights", tmp_path / "r"), ok=False)
    assert_one_line_error(res, "has 4 rows", "has 5 utterances")
    monkeypatch.undo()
    res = cli(*decode_args("predict", shards, run / "weights", tmp_path / "r", "--header", "a,b"))
    assert (tmp_path / "r" / "submission.csv").read_text().splitlines()[0] == "a,b"


# ---------------------------------------------------------------------------- symbol inventory

OUTPUTS = {13: len(S22_SYMBOLS) + 1, 15: 43, 27: 41, 28: 41}


def final_linear(state: dict):
    """The classifier's last Linear weight in a model state_dict: [outputs, hidden]."""
    weights = sorted((int(k.split(".")[1]), v) for k, v in state.items() if k.startswith("linears.")
                     and k.endswith(".weight"))
    return weights[-1][1]


@pytest.mark.slow
@pytest.mark.parametrize("dim", [13, 15, 27, 28])
def test_every_edition_records_its_inventory_and_decodes_into_its_codes(width_runs, dim, tmp_path):
    import csv
    import json

    import torch

    from tests.helpers import cli, decode_args
    data, shards, run = width_runs[dim]
    inv = edition_inventory(data, dim)
    assert inv.num_classes == OUTPUTS[dim] and inv.name == {13: "s22", 15: "f22", 27: "s24", 28: "s24"}[dim]
    for split in ("train-clean-100", "dev-clean", "test-clean"):
        raw = json.loads((shards / split / "manifest.json").read_text())
        assert (raw["inventory"], raw["vocab"], raw["codes"], raw["framing"]) == \
            (inv.name, list(inv.symbols), list(inv.codes), list(inv.framing))
        assert mf.load(shards, split).inventory.matches(inv)
    ck = torch.load(run / "weights" / "best.pt", weights_only=True)
    assert (ck["inventory"], ck["vocab"], ck["codes"], ck["framing"]) == \
        (inv.name, list(inv.symbols), list(inv.codes), list(inv.framing))
    assert ck["model_config"]["num_classes"] == OUTPUTS[dim] == final_linear(ck["model"]).shape[0]
    allowed = {c for i, c in enumerate(inv.codes) if i and i not in inv.masked}
    with open(run / "results" / "submission.csv", newline="", encoding="utf-8") as fh:
        labels = [row[1] for row in list(csv.reader(fh))[1:]]
    assert set("".join(labels)) <= allowed
    # The references of an evaluation are the shards' labels in the manifest's codes.
    cli(*decode_args("evaluate", shards, run / "weights", tmp_path, "--split", "dev-clean"))
    with open(tmp_path / "evaluate-dev-clean.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    refs = "".join(r["reference"] for r in rows)
    assert len(rows) == 4 and refs and set(refs) <= allowed
    assert set("".join(r["greedy"] + r["beam"] for r in rows)) <= allowed
    if dim == 13:                # the table's own codes: none of them is F22's
        assert not set(refs) & set(F22.codes)


@pytest.mark.slow
def test_transcribe_follows_the_checkpoints_inventory(width_runs, tmp_path):
    from tests.helpers import cli
    data, _, run = width_runs[13]
    inv = edition_inventory(data, 13)
    f = sorted((data / "test-clean" / "mfcc").glob("*.npy"))[0]
    for beam in ("0", "3"):
        out = cli("transcribe", f, "--weights", run / "weights", "--beam-width", beam, "--arpabet").output
        name, _, symbols = out.splitlines()[0].partition("\t")
        assert name == f.name and set(symbols.split()) <= set(inv.symbols[1:])
        out = cli("transcribe", f, "--weights", run / "weights", "--beam-width", beam).output
        assert set(out.splitlines()[0].partition("\t")[2]) <= set(inv.codes[1:])


@pytest.mark.slow
def test_a_checkpoint_of_another_inventory_is_refused(width_runs, tmp_path):
    from tests.helpers import assert_one_line_error, cli, decode_args
    data, _, run = width_runs[15]
    cli("shards", "--data", data, "--shards", tmp_path / "s24", "--quiet", "--workers", "1", "--min-shards", "2",
        "--inventory", "s24")
    for command in ("predict", "evaluate"):
        res = cli(*decode_args(command, tmp_path / "s24", run / "weights", tmp_path / "r"), ok=False)
        assert_one_line_error(res, "symbol inventory f22 (43 outputs)", "s24 (41 outputs)")
    assert not (tmp_path / "r" / "submission.csv").exists()


@pytest.mark.slow
def test_f22_manifests_and_checkpoints_without_an_inventory_still_load(width_runs, tmp_path):
    """What was written before inventories (no "inventory", "codes", "framing") is F22's, and decodes
    to the same submission."""
    import json
    import shutil

    import torch

    from tests.helpers import cli, decode_args
    _, shards, run = width_runs[15]
    old = tmp_path / "shards"
    shutil.copytree(shards, old)
    for path in old.glob("*/manifest.json"):
        raw = json.loads(path.read_text())
        for key in ("inventory", "codes", "framing"):
            raw.pop(key)
        raw["digest"] = mf._digest(raw)
        path.write_text(json.dumps(raw))
        m = mf.load(old, path.parent.name)
        assert m.inventory is F22 and m.vocab == list(VOCAB)
    (tmp_path / "w").mkdir()
    state = torch.load(run / "weights" / "best.pt", weights_only=True)
    for key in ("inventory", "codes", "framing"):
        state.pop(key)
    torch.save(state, tmp_path / "w" / "best.pt")
    from training.checkpoint import Checkpoint
    assert Checkpoint.load(tmp_path / "w" / "best.pt").symbol_inventory() is F22
    cli(*decode_args("predict", old, tmp_path / "w", tmp_path / "r"))
    assert (tmp_path / "r" / "submission.csv").read_text() == (run / "results" / "submission.csv").read_text()


def relabel_corpus(data, fn):
    for p in data.glob("*/transcript/*.npy"):
        np.save(p, np.asarray(fn([str(s) for s in np.load(p)])))


def test_a_symbol_outside_the_inventory_is_rejected_naming_it(pipe, tmp_path):
    data = width_corpus(tmp_path / "data", 15)
    first = sorted((data / "train-clean-100" / "transcript").glob("*.npy"))
    np.save(first[0], np.asarray(["[SOS]", "AA", "SIL", "B", "[EOS]"]))        # S22's silence under S24
    build_quiet(data, tmp_path / "s24", inventory="s24")
    rows = {r["utterance"]: r["reason"] for r in pipe.rejected_rows(tmp_path / "s24")}
    assert list(rows) == [first[0].stem]
    assert "unknown symbol(s) 'SIL'" in rows[first[0].stem] and "s24" in rows[first[0].stem]
    m = mf.load(tmp_path / "s24", "train-clean-100")
    assert m.inventory is S24 and m.num_utterances == 23
    # The same corpus in an S22 table's symbols (where SIL is the silence): an F22 symbol left in a
    # transcript is rejected, named, and so is F22's framing.
    relabel_corpus(data, to_s22)
    np.save(first[1], np.asarray(["<sos>", "AA", "[SIL]", "<eos>"]))
    np.save(first[2], np.asarray(["[SOS]", "AA", "[EOS]"]))
    tsv = write_s22_tsv(tmp_path / S22_FILE)
    build_quiet(data, tmp_path / "s22", inventory=tsv)
    rows = {r["utterance"]: r["reason"] for r in pipe.rejected_rows(tmp_path / "s22")}
    assert sorted(rows) == [first[1].stem, first[2].stem]
    assert "unknown symbol(s) '[SIL]'" in rows[first[1].stem] and "s22" in rows[first[1].stem]
    assert "must start with <sos> and end with <eos>" in rows[first[2].stem]
    m, per_shard = pipe.read_split(tmp_path / "s22", "train-clean-100")
    inv = load_inventory(tsv)
    assert m.inventory.matches(inv) and m.num_utterances == 22
    by_key = dict(zip(m.keys, m.ids))
    for samples in per_shard:
        for key, _, labels in samples:
            syms = [str(x) for x in np.load(data / "train-clean-100" / "transcript" / f"{by_key[key]}.npy")]
            assert list(labels) == [inv.index[s] for s in syms[1:-1]]


BAD_TSV = {
    "no tab": ("SIL\t-\nAA a\n", 2, "expected `symbol<TAB>code`"),
    "long code": ("SIL\t-\nAA\tab\n", 2, "one character"),
    "repeated symbol": ("SIL\t-\nAA\ta\n# c\nAA\tb\n", 4, "symbol 'AA' is already used on line 2"),
    "repeated code": ("SIL\t-\nAA\t-\n", 2, "code '-' is already used on line 1"),
    "third field": ("SIL\t-\nAA\ta\tb\n", 2, "expected `symbol<TAB>code`"),
    "framing": ("#framing\t<sos>\nSIL\t-\n", 1, "#framing"),
    "second framing": ("#framing\ta\tb\nSIL\t-\n#framing\tc\td\n", 3, "second #framing"),
    "empty code": ("SIL\t\n", 1, "empty code"),
}


@pytest.mark.parametrize("case", sorted(BAD_TSV))
def test_a_bad_inventory_line_is_one_line_naming_file_and_line(tmp_path, case):
    from pipeline.errors import PhonerecError
    text, line, words = BAD_TSV[case]
    path = tmp_path / "my.tsv"
    path.write_text(text)
    with pytest.raises(PhonerecError) as info:
        load_inventory(str(path))
    msg = str(info.value)
    assert "\n" not in msg and f"{path}, line {line}:" in msg and words in msg, msg


def test_inventory_option_errors_are_one_line(tmp_path):
    from tests.helpers import assert_one_line_error, cli
    bad = tmp_path / "my.tsv"
    bad.write_text("SIL\t-\nAA\ta\nAE\n")
    args = ["shards", "--data", tmp_path / "none", "--shards", tmp_path / "s", "--quiet"]
    assert_one_line_error(cli(*args, "--inventory", bad, ok=False), str(bad), "line 3")
    assert_one_line_error(cli(*args, "--inventory", "s99", ok=False), "unknown inventory 's99'", "f22, s23, s24")
    empty = tmp_path / "empty.tsv"
    empty.write_text("# nothing\n")
    assert_one_line_error(cli(*args, "--inventory", empty, ok=False), str(empty), "no `symbol<TAB>code` lines")


def test_inventories_as_data():
    import torch

    from pipeline.vocab import CODES, INVENTORIES, Inventory, encode_transcript, read_tsv
    from training.checkpoint import Checkpoint
    from decoding import restrict_to_labels
    assert (F22.symbols, F22.codes, F22.masked) == (VOCAB, CODES, (41, 42))
    assert (S24.symbols, S24.codes, S24.masked) == (VOCAB[:-2], CODES[:-2], ())
    assert INVENTORIES["s23"] is S24 and load_inventory("S24") is S24 and load_inventory("f22") is F22
    t = ["[SOS]", "[SIL]", "AA", "B", "[SIL]", "[EOS]"]
    assert list(S24.encode(t)) == list(F22.encode(t)) == list(encode_transcript(t))
    for inv in (F22, S24):                          # a framing token is never a target
        with pytest.raises(ValueError, match="unknown symbol"):
            inv.encode(["[SOS]", "AA", "[EOS]", "[EOS]"])
        assert Inventory.from_json(json_round(inv.to_json())) is inv
    assert Inventory.from_json({"vocab": list(VOCAB)}) is F22             # before inventories
    assert Checkpoint(model={}, model_config={}, vocab=list(VOCAB)).symbol_inventory() is F22
    lp = torch.zeros(2, 5, 43)
    f22 = restrict_to_labels(lp, F22)             # F22's framing tokens are outputs: never decoded
    assert torch.isinf(f22[..., 41:]).all() and not f22[..., :41].isinf().any()
    assert torch.equal(restrict_to_labels(lp), f22)
    assert not restrict_to_labels(lp[..., :41], S24).isinf().any()       # S24: every output decodes
    with pytest.raises(ValueError, match="41 outputs"):
        restrict_to_labels(lp, S24)


def test_a_tsv_inventory_reads_its_table(tmp_path):
    from pipeline.vocab import Inventory
    inv = load_inventory(write_s22_tsv(tmp_path / S22_FILE))
    assert inv.name == "s22" and inv.symbols == ("", *S22_SYMBOLS) and inv.codes == (" ", *S22_CODES)
    assert inv.framing == ("<sos>", "<eos>") and inv.masked == () and inv.num_classes == 42
    assert list(inv.encode(["<sos>", "SIL", "SPN", "AA", "<eos>"])) == [1, 41, 2]
    assert inv.to_codes([1, 2, 41]) == "0" + S22_CODES[1] + "+" and inv.to_arpabet([1, 41]) == ["SIL", "SPN"]
    assert Inventory.from_json(json_round(inv.to_json())).matches(inv)
    (tmp_path / "plain.tsv").write_text("#framing\nx\ta\ny\tb\n")        # unframed transcripts
    plain = load_inventory(tmp_path / "plain.tsv")
    assert plain.framing == () and list(plain.encode(["y", "x"])) == [2, 1]


def test_merge_refuses_splits_of_different_inventories(pipe, tmp_path):
    import dataclasses
    data = width_corpus(tmp_path / "data", 15, {"train-clean-100": 6, "dev-clean": 3})
    build(data, tmp_path / "s", train="train-clean-100,dev-clean", workers=1, progress=False,
          options=ShardOptions(min_shards=1), log=lambda _m: None)
    a, b = mf.load(tmp_path / "s", "train-clean-100"), mf.load(tmp_path / "s", "dev-clean")
    assert mf.merge([a, b], tmp_path / "s").inventory is F22
    with pytest.raises(mf.ManifestError, match="different symbol inventories"):
        mf.merge([a, dataclasses.replace(b, inventory=S24)], tmp_path / "s")


def json_round(d):
    import json
    return json.loads(json.dumps(d))
