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
