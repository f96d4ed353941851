"""Shared fixtures.

``tiny_corpus`` is a small synthetic corpus in the real raw layout and ``tiny_shards`` the shards
built from it; ``fast`` a corpus of short utterances and its shards for training runs; all are
session-scoped and must be treated as read-only (a test that modifies files copies them first,
see ``copy_tree``). ``pipe`` bundles the pipeline helpers below; the stage-2 helpers (training
runs, the command line, torchrun) are in tests/helpers.py.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # `pytest` run without the project installed
    sys.path.insert(0, str(ROOT))

from pipeline import build as build_mod  # noqa: E402
from pipeline import manifest as mf  # noqa: E402
from pipeline.shardformat import decode_sample  # noqa: E402
from pipeline.shards import ShardOptions  # noqa: E402
from corpora.random import generate  # noqa: E402
from pipeline.vocab import EOS, SOS, SYMBOL_INDEX  # noqa: E402

TINY_SPLITS = {"train-clean-100": 60, "dev-clean": 12, "test-clean": 10}
TINY_SEED = 1234
TRAIN, DEV, TEST = "train-clean-100", "dev-clean", "test-clean"


# ----------------------------------------------------------------------------------- helpers

def build_shards(data, out, *, train=TRAIN, dev=DEV, test=TEST, min_shards=4, seed=0, workers=1,
                 cmn=False, strict=False, target_mb=16.0):
    """`phonerec shards` as a function call with the test defaults (quiet, one process)."""
    return build_mod.build(data, out, train=train, dev=dev, test=test,
                           options=ShardOptions(seed=seed, target_mb=target_mb, min_shards=min_shards),
                           workers=workers, cmn=cmn, strict=strict, progress=False, log=lambda _m: None)


def read_split(shards_dir, split):
    """(manifest, [[(key, feats float16, labels or None), ...] per shard]) read through WebDataset."""
    import webdataset as wds

    m = mf.load(shards_dir, split)
    per_shard = []
    for path in m.shard_paths():
        ds = wds.WebDataset([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None,
                            empty_check=False)
        per_shard.append([decode_sample(s) for s in ds])
    return m, per_shard


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tar_hashes(shards_dir) -> dict[str, str]:
    root = Path(shards_dir)
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.glob("*/*.tar"))}


def mtimes(shards_dir, pattern="*/*.tar") -> dict[str, int]:
    root = Path(shards_dir)
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.glob(pattern))}


def raw_ids(data, split) -> list[str]:
    return sorted(p.name[:-4] for p in (Path(data) / split / "mfcc").glob("*.npy"))


def transcript_dir(data, split) -> Path:
    t = Path(data) / split / "transcript"
    return t / "raw" if (t / "raw").is_dir() else t


def raw_features(data, split, uid) -> np.ndarray:
    return np.load(Path(data) / split / "mfcc" / f"{uid}.npy")


def raw_labels(data, split, uid) -> np.ndarray:
    """Transcript indices without [SOS]/[EOS], computed from the file independently of the pipeline."""
    syms = [str(s) for s in np.load(transcript_dir(data, split) / f"{uid}.npy", allow_pickle=True)]
    assert syms[0] == SOS and syms[-1] == EOS
    return np.array([SYMBOL_INDEX[s] for s in syms[1:-1]], dtype=np.uint8)


def train_matrix(data, splits) -> np.ndarray:
    """All frames of the given splits, concatenated, as float64."""
    return np.concatenate([raw_features(data, s, u).astype(np.float64) for s in splits for u in raw_ids(data, s)])


def rejected_rows(shards_dir) -> list[dict]:
    import csv
    with open(Path(shards_dir) / "rejected.tsv", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def write_npy(path, arr, allow_pickle=False) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.save(fh, arr, allow_pickle=allow_pickle)
    return path


def write_utterance(data, split, uid, feats, symbols=None, nested=False) -> None:
    """One utterance in the raw layout; `symbols` is a framed transcript list (or None: no transcript)."""
    write_npy(Path(data) / split / "mfcc" / f"{uid}.npy", feats)
    if symbols is not None:
        tdir = Path(data) / split / "transcript"
        write_npy((tdir / "raw" if nested else tdir) / f"{uid}.npy", np.asarray(symbols))


def random_feats(rng, frames) -> np.ndarray:
    return (rng.normal(0, 1, (frames, 15)) * np.linspace(10, 2, 15) + np.linspace(-20, 5, 15)).astype(np.float32)


def copy_tree(src, dst) -> Path:
    """Copy keeping mtimes (the pipeline fingerprints inputs by name, size and mtime)."""
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return Path(dst)


PIPE = types.SimpleNamespace(
    build=build_shards, read_split=read_split, sha256=sha256, tar_hashes=tar_hashes, mtimes=mtimes,
    raw_ids=raw_ids, raw_features=raw_features, raw_labels=raw_labels, train_matrix=train_matrix,
    rejected_rows=rejected_rows, write_npy=write_npy, write_utterance=write_utterance,
    random_feats=random_feats, copy_tree=copy_tree, TRAIN=TRAIN, DEV=DEV, TEST=TEST,
    TINY_SPLITS=TINY_SPLITS, TINY_SEED=TINY_SEED,
)


# ---------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def pipe():
    """Helpers for pipeline tests (building, reading shards back, raw-corpus access)."""
    return PIPE


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A small synthetic corpus (60 train, 12 dev, 10 unlabelled test utterances); read-only."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    generate(root, TINY_SPLITS, seed=TINY_SEED, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_shards(tiny_corpus, tmp_path_factory) -> Path:
    """Shards of `tiny_corpus` (min_shards=4, seed 0); read-only."""
    out = tmp_path_factory.mktemp("tiny_shards")
    build_mod.build(tiny_corpus, out, train=TRAIN, dev=DEV, test=TEST, workers=1, progress=False,
                    options=ShardOptions(min_shards=4), log=lambda _m: None)
    return out


@pytest.fixture(scope="session")
def trained(tiny_shards, tmp_path_factory) -> Path:
    """A model1 checkpoint trained for a few steps on the tiny shards, without a decode.json
    (read-only: tests that choose a decoding copy it)."""
    from tests.helpers import cli
    w = tmp_path_factory.mktemp("weights")
    cli("train", "--shards", tiny_shards, "--weights", w, "--results", w / "results", "--epochs", "1", "--preset",
        "model1", "--workers", "0", "--max-frames", "8000", "--max-steps", "4", "--no-tune-decoding", "--quiet")
    assert (w / "best.pt").is_file() and not (w / "decode.json").exists()
    return w


@pytest.fixture(scope="session")
def fast(tmp_path_factory):
    """(data, shards) of short learnable utterances (60-300 frames) for training runs: 48 train
    utterances in 6 shards, 8 dev, 6 unlabelled test; read-only."""
    from tests.helpers import FAST_COUNTS, write_corpus
    root = tmp_path_factory.mktemp("fast")
    write_corpus(PIPE, root / "data", FAST_COUNTS)
    build_shards(root / "data", root / "shards", min_shards=6)
    assert len(mf.load(root / "shards", TRAIN).shards) == 6
    return root / "data", root / "shards"


@pytest.fixture(scope="module")
def served(fast, tmp_path_factory):
    """The `fast` shards published to a folder and served over HTTP on 127.0.0.1 for the module."""
    from pipeline.publish import publish
    from tests.httpserver import ShardServer
    pub = tmp_path_factory.mktemp("published")
    publish(fast[1], f"file://{pub}", progress=False, log=lambda _m: None)
    with ShardServer(pub) as server:
        yield server


@pytest.fixture(scope="module")
def one_thread():
    """In-process training runs use one intra-op thread, like the subprocesses (OMP_NUM_THREADS=1):
    the small LSTM steps are dominated by thread synchronisation and slow down badly on a busy
    2-core machine."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shard_reads(monkeypatch):
    """The shard groups the trainer's loader reads, in order: proves a resumed run skips what it consumed."""
    import training.data as tdata

    reads: list[list[int]] = []
    real = tdata.read_shards

    def spy(m, shards, source=None):
        reads.append(list(shards))
        return real(m, shards, source)

    monkeypatch.setattr(tdata, "read_shards", spy)
    return reads
