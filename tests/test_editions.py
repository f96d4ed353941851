"""Every edition of the task's data (issue: editions): the layout variants the editions use."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import manifest as mf
from pipeline.build import build
from pipeline.shards import ShardOptions
from pipeline.vocab import SYMBOL_INDEX


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
