"""Stage-2 epoch planner and shard loader, on real small shards and an in-memory manifest.

No training here: the planner is a pure function of (manifest, seed, epoch, rank, world, workers),
and the loader must stream exactly the planned batches, in order, from the shard files.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import zlib

import numpy as np
import pytest
import torch

from pipeline import manifest as mf
from pipeline.manifest import Manifest, ShardInfo
from pipeline.shards import plan_order, cut_points
from corpora.random import sample_durations
from training import data as tdata
from pipeline.reading import ShardReadError
from training.data import make_loader
from training.plan import BatchOptions, PlanError, check_budget, plan_epoch

TRAIN, DEV, TEST = "train-clean-100", "dev-clean", "test-clean"
TINY_OPTS = BatchOptions(max_frames=8000, max_utts=3)   # both limits bind on the tiny corpus


# ------------------------------------------------------------------------------------ helpers

def librispeech_like(n: int = 5000, seed: int = 0, target_mb: float = 16.0, min_shards: int = 8) -> Manifest:
    """An in-memory manifest shaped like a `phonerec shards` split (no tars: planning only)."""
    rng = np.random.default_rng(seed)
    frames = np.round(sample_durations(rng, n) * 100).astype(np.int64)
    order = plan_order(frames, seed)
    f = frames[order]
    cuts = cut_points(f * 30, target_mb * 2**20, min_shards)
    shards = [ShardInfo(name=f"x-{i:06d}.tar", sha256="", utterances=int(cuts[i + 1] - cuts[i]),
                        frames=int(f[cuts[i]:cuts[i + 1]].sum()), min_frames=int(f[cuts[i]]),
                        max_frames=int(f[cuts[i + 1] - 1]), bytes=0)
              for i in range(len(cuts) - 1)]
    ids = [f"u{i}" for i in range(n)]
    return Manifest(split="x", labelled=True, seed=seed, stats={}, shards=shards, ids=ids, keys=ids, frames=f,
                    label_lens=np.maximum(f // 10, 1), index=order.astype(np.int64))


@pytest.fixture(scope="module")
def libri() -> Manifest:
    m = librispeech_like()
    assert len(m.shards) >= 8
    return m


@pytest.fixture(scope="module")
def tiny_train(tiny_shards) -> Manifest:
    return mf.load(tiny_shards, TRAIN)


def all_plans(m, world, workers, opts, balance=True, seed=0, epoch=0):
    return [plan_epoch(m, seed=seed, epoch=epoch, rank=r, world=world, workers=workers, opts=opts, balance=balance)
            for r in range(world)]


def rows_of(batches) -> list[list[int]]:
    return [np.asarray(b).tolist() for b in batches]


def loader_rows(m, plan, start_step=0) -> list[list[int]]:
    return [b.rows.tolist() for b in make_loader(m, plan, start_step)]


def shard_content(shards_dir, split) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """key -> (feats, labels) read straight from the tars, independently of training.data."""
    import webdataset as wds
    from pipeline.shardformat import decode_sample
    m = mf.load(shards_dir, split)
    out = {}
    for path in m.shard_paths():
        ds = wds.WebDataset([str(path)], shardshuffle=False, nodesplitter=None, workersplitter=None,
                            empty_check=False)
        for s in ds:
            key, feats, labels = decode_sample(s)
            out[key] = (feats, labels)
    return out


def first_error(loader) -> BaseException | None:
    """Iterate until the loader raises; returns the exception (None if it did not raise).

    The loader's iterator ends its workers on a shard error itself; close() ends them for any
    other error too, at once (not when the garbage collector gets to the iterator)."""
    it = iter(loader)
    err = None
    try:
        for _ in it:
            pass
    except Exception as exc:  # noqa: BLE001
        err = type(exc)(str(exc))
    it.close()
    return err


# ----------------------------------------------------------------- 1. coverage, balance, budget

@pytest.mark.parametrize("which", ["tiny", "libri"])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_plan_covers_every_row_and_balances_steps(which, world, workers, request):
    m = request.getfixturevalue("tiny_train" if which == "tiny" else "libri")
    opts = TINY_OPTS if which == "tiny" else BatchOptions()
    n = m.num_utterances

    # Evaluation plans (balance=False): every manifest row in exactly one batch over all ranks.
    free = all_plans(m, world, workers, opts, balance=False)
    rows = np.concatenate([np.concatenate(p.sequence()) for p in free if p.sequence()])
    assert len(rows) == n
    assert sorted(rows.tolist()) == list(range(n))
    for p in free:
        assert p.dropped_utterances == 0 and p.dropped_batches == 0
        assert len(p.sequence()) == p.steps == sum(p.quotas)

    # Training plans: the same number of steps on every rank; consumed + dropped = all, once each.
    plans = all_plans(m, world, workers, opts)
    steps = {p.steps for p in plans}
    assert len(steps) == 1, f"ranks disagree on steps: {[p.steps for p in plans]}"
    (steps,) = steps
    assert steps > 0
    assert steps == min(p.rank_batches[p.rank] for p in free)
    consumed = []
    for p in plans:
        seq = p.sequence()
        assert len(seq) == steps == sum(p.quotas)
        assert p.slots == max(workers, 1) and len(p.quotas) == p.slots
        consumed.extend(int(r) for b in seq for r in b)
    dropped = {(p.dropped_utterances, p.dropped_batches) for p in plans}
    assert len(dropped) == 1, "every rank must report the same global drop figures"
    d_utts, d_batches = dropped.pop()
    assert len(consumed) == len(set(consumed)), "a row consumed twice"
    assert len(consumed) + d_utts == n
    assert d_batches == sum(plans[0].rank_batches) - steps * world
    if world == 1:
        assert d_utts == 0 and sorted(consumed) == list(range(n))

    # Every batch of every plan respects the budget.
    for p in plans + free:
        for b in p.sequence():
            assert 1 <= len(b) <= opts.max_utts
            assert len(b) * int(m.frames[b].max()) <= opts.max_frames


def test_batches_come_from_one_shard(tiny_train):
    start = tiny_train.shard_start
    for p in all_plans(tiny_train, 2, 2, TINY_OPTS):
        for b in p.sequence():
            shard = np.searchsorted(start, b, side="right") - 1
            assert len(set(shard.tolist())) == 1


def test_budget_too_small_names_max_frames(tiny_train):
    longest = int(tiny_train.frames.max())
    check_budget(tiny_train, BatchOptions(max_frames=longest))          # exactly fits: fine
    plan_epoch(tiny_train, seed=0, epoch=0, opts=BatchOptions(max_frames=longest))
    with pytest.raises(PlanError, match="--max-frames") as exc:
        check_budget(tiny_train, BatchOptions(max_frames=longest - 1))
    assert str(longest) in str(exc.value)
    with pytest.raises(PlanError, match="--max-frames"):
        plan_epoch(tiny_train, seed=0, epoch=0, world=2, opts=BatchOptions(max_frames=longest - 1))
    assert issubclass(PlanError, ValueError)   # the CLI turns ValueErrors into one-line messages


# ---------------------------------------------------------------------------- 2. determinism

def _signature(plans):
    return [(p.steps, p.quotas, [[(w.shards, rows_of(w.batches)) for w in ws] for ws in p.windows],
             rows_of(p.sequence()), p.dropped_utterances) for p in plans]


def _assignment(plans):
    return [sorted(s for ws in p.windows for w in ws for s in w.shards) for p in plans]


def test_plan_is_a_pure_function_of_seed_and_epoch(libri):
    a = all_plans(libri, 2, 2, BatchOptions(), seed=7, epoch=3)
    all_plans(libri, 2, 2, BatchOptions(), seed=7, epoch=4)      # no hidden state between calls
    b = all_plans(libri, 2, 2, BatchOptions(), seed=7, epoch=3)
    assert _signature(a) == _signature(b)

    other_epoch = all_plans(libri, 2, 2, BatchOptions(), seed=7, epoch=4)
    assert _assignment(other_epoch) != _assignment(a), "shard-to-rank assignment should change per epoch"
    assert rows_of(other_epoch[0].sequence()) != rows_of(a[0].sequence())
    # Even batches over the same shards come in another order and with other members.
    first = {tuple(sorted(r)) for r in rows_of(a[0].sequence())}
    assert first != {tuple(sorted(r)) for r in rows_of(other_epoch[0].sequence())}

    other_seed = all_plans(libri, 2, 2, BatchOptions(), seed=8, epoch=3)
    assert rows_of(other_seed[0].sequence()) != rows_of(a[0].sequence())
    assert _signature(other_seed) != _signature(a)


def test_evaluation_plan_ignores_seed_and_epoch(tiny_train):
    a = plan_epoch(tiny_train, seed=0, epoch=0, world=2, rank=1, workers=2, opts=TINY_OPTS, shuffle=False,
                   balance=False)
    b = plan_epoch(tiny_train, seed=5, epoch=9, world=2, rank=1, workers=2, opts=TINY_OPTS, shuffle=False,
                   balance=False)
    assert rows_of(a.sequence()) == rows_of(b.sequence())


# ---------------------------------------------------------------------- 3. padding efficiency

@pytest.mark.parametrize("world", [1, 4])
def test_padding_efficiency_librispeech_like(libri, world):
    real = padded = 0
    for p in all_plans(libri, world, 2, BatchOptions()):
        r, pad = p.padding()
        ratio = r / pad
        print(f"world {world} rank {p.rank}: padding efficiency {ratio:.4f} over {p.steps} steps "
              f"({len(libri.shards)} shards, {p.dropped_utterances} utterances dropped)")
        assert ratio >= 0.95, f"rank {p.rank} pads too much: {ratio:.4f}"
        # padding() counts exactly the frames of the planned batches
        seq = p.sequence()
        assert r == sum(int(libri.frames[b].sum()) for b in seq)
        real, padded = real + r, padded + pad
    print(f"world {world}: overall padding efficiency {real / padded:.4f}")
    assert real / padded >= 0.95


# ---------------------------------------------------------------------------------- 4. loader

@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world", [1, 2])
def test_loader_yields_the_plan_in_order_and_resumes(tiny_shards, tiny_train, world, workers):
    for rank in range(world):
        plan = plan_epoch(tiny_train, seed=3, epoch=1, rank=rank, world=world, workers=workers, opts=TINY_OPTS)
        want = rows_of(plan.sequence())
        assert len(want) == plan.steps > 2
        assert loader_rows(tiny_train, plan) == want
        first_window = len(plan.windows[0][0].batches)
        ks = sorted({1, 2, first_window - 1, first_window, first_window + 1, plan.steps // 2, plan.steps - 1,
                     plan.steps} & set(range(1, plan.steps + 1)))
        for k in ks:
            assert loader_rows(tiny_train, plan, start_step=k) == want[k:], f"rank {rank}, resumed at step {k}"


def test_ring_slots_are_reused_and_batches_kept_intact(tiny_train):
    """CPU loaders hand batches over through a shared ring of slots; with one prefetch per worker
    the ring has 4 slots per worker, far fewer than the batches, and every batch kept (all of them,
    to the end) still holds its own data: equal to the same plan read in the main process."""
    opts = dataclasses.replace(TINY_OPTS, max_frames=int(tiny_train.frames.max()))
    plan = plan_epoch(tiny_train, seed=5, epoch=0, workers=2, opts=opts)
    plan0 = plan_epoch(tiny_train, seed=5, epoch=0, workers=0, opts=opts)
    loader = make_loader(tiny_train, plan, prefetch=1)
    assert loader.dataset.ring is not None and loader.dataset.ring.shape[:2] == (2, 4)
    kept = list(loader)
    assert plan.steps > 3 * loader.dataset.ring.shape[1]
    by_rows = {tuple(b.rows.tolist()): b for b in make_loader(tiny_train, plan0)}
    assert sorted(by_rows) == sorted(tuple(b.rows.tolist()) for b in kept)
    for b in kept:
        ref = by_rows[tuple(b.rows.tolist())]
        for name in ("feats", "lengths", "labels", "label_lengths"):
            assert torch.equal(getattr(b, name), getattr(ref, name)), name
    assert make_loader(tiny_train, plan, pin_memory=True).dataset.ring is None


def test_resume_does_not_read_consumed_windows(tiny_train, shard_reads):
    plan = plan_epoch(tiny_train, seed=0, epoch=0, workers=0, opts=TINY_OPTS)
    wins = plan.windows[0]
    assert len(wins) >= 2
    reads = shard_reads
    first = len(wins[0].batches)
    for k in (first, first + 1):                       # at the end of the first window, inside the second
        reads.clear()
        assert loader_rows(tiny_train, plan, start_step=k) == rows_of(plan.sequence())[k:]
        assert reads == [w.shards for w in wins[1:]], f"resumed at step {k}"
    reads.clear()
    assert loader_rows(tiny_train, plan, start_step=first - 1) == rows_of(plan.sequence())[first - 1:]
    assert reads == [w.shards for w in wins]
    reads.clear()
    assert loader_rows(tiny_train, plan, start_step=plan.steps) == []
    assert reads == []


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_the_shard_content(tiny_shards, tiny_train, workers):
    content = shard_content(tiny_shards, TRAIN)
    plan = plan_epoch(tiny_train, seed=0, epoch=0, workers=workers, opts=TINY_OPTS)
    n = 0
    for batch in make_loader(tiny_train, plan):
        B = len(batch.rows)
        assert batch.feats.dtype == torch.float16 and batch.feats.shape[0] == B and batch.feats.shape[2] == 15
        assert batch.lengths.dtype == batch.labels.dtype == batch.label_lengths.dtype == torch.int64
        assert batch.feats.shape[1] == int(batch.lengths.max())
        assert batch.labels.shape[1] == int(batch.label_lengths.max())
        for i, r in enumerate(batch.rows.tolist()):
            feats, labels = content[tiny_train.keys[r]]
            t, ll = int(batch.lengths[i]), int(batch.label_lengths[i])
            assert t == tiny_train.frames[r] == len(feats)
            assert ll == tiny_train.label_lens[r] == len(labels)
            assert torch.equal(batch.feats[i, :t], torch.from_numpy(feats))
            assert not batch.feats[i, t:].any(), "feature padding must be zeros"
            assert batch.labels[i, :ll].tolist() == labels.astype(np.int64).tolist()
            assert not batch.labels[i, ll:].any(), "label padding must be zeros"
            n += 1
    assert n == tiny_train.num_utterances
    assert batch.frames == int(batch.lengths.sum())


def test_unlabelled_split_gives_empty_labels(tiny_shards):
    m = mf.load(tiny_shards, TEST)
    assert not m.labelled
    content = shard_content(tiny_shards, TEST)
    plan = plan_epoch(m, seed=0, epoch=0, workers=0, opts=TINY_OPTS, shuffle=False, balance=False)
    seen = []
    for batch in make_loader(m, plan):
        B = len(batch.rows)
        assert batch.labels.shape == (B, 0) and batch.labels.dtype == torch.int64
        assert batch.label_lengths.tolist() == [0] * B
        for i, r in enumerate(batch.rows.tolist()):
            t = int(batch.lengths[i])
            assert torch.equal(batch.feats[i, :t], torch.from_numpy(content[m.keys[r]][0]))
            seen.append(r)
    assert sorted(seen) == list(range(m.num_utterances))


@pytest.fixture
def damaged_shards(pipe, tiny_shards, tmp_path):
    return pipe.copy_tree(tiny_shards, tmp_path / "shards")


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["truncate-half", "truncate-member", "delete", "empty", "drop-sample"])
def test_damaged_shard_raises_naming_the_file(damaged_shards, workers, damage):
    m = mf.load(damaged_shards, TRAIN)
    plan = plan_epoch(m, seed=0, epoch=0, workers=workers, opts=TINY_OPTS)
    victim_no = plan.windows[-1][-1].shards[-1]      # a shard read late, after good batches
    victim = m.shard_paths()[victim_no]
    size = victim.stat().st_size
    if damage == "truncate-half":
        os.truncate(victim, size // 2)
    elif damage == "truncate-member":                  # cut cleanly at a 512-byte tar block boundary
        os.truncate(victim, (size // 2) // 512 * 512)
    elif damage == "empty":
        os.truncate(victim, 0)
    elif damage == "drop-sample":                      # a valid tar that lacks its last utterance
        import io
        import tarfile
        with tarfile.open(victim) as tar:
            members = [(mi, tar.extractfile(mi).read()) for mi in tar.getmembers()]
        last_key = members[-1][0].name.split(".")[0]
        with tarfile.open(victim, "w") as tar:
            for mi, data in members:
                if mi.name.split(".")[0] != last_key:
                    tar.addfile(mi, io.BytesIO(data))
    else:
        victim.unlink()
    err = first_error(make_loader(m, plan))
    assert isinstance(err, ShardReadError) and victim.name in str(err), err


def test_shard_with_foreign_content_is_rejected(pipe, tiny_shards, tmp_path):
    """A shard replaced by another shard of the same split (right size class, wrong keys)."""
    shards = pipe.copy_tree(tiny_shards, tmp_path / "shards")
    m = mf.load(shards, TRAIN)
    paths = m.shard_paths()
    shutil.copyfile(paths[1], paths[0])
    with pytest.raises(ShardReadError, match=paths[0].name):
        tdata.read_shards(m, [0])


# ------------------------------------------------------------------- 5. merged training splits

@pytest.fixture(scope="module")
def two_train_splits(pipe, tmp_path_factory):
    from corpora.random import generate
    root = tmp_path_factory.mktemp("two_train")
    generate(root / "data", {"train-clean-100": 18, "train-clean-360": 14, DEV: 4}, seed=11, unlabelled=(),
             workers=1, progress=False)
    pipe.build(root / "data", root / "shards", train="train-clean-100,train-clean-360", dev=DEV, test="",
                 min_shards=3)
    return root / "shards"


@pytest.mark.parametrize("workers", [0, 2])
def test_merged_training_splits(two_train_splits, workers):
    a, b = mf.load(two_train_splits, "train-clean-100"), mf.load(two_train_splits, "train-clean-360")
    m = mf.load_many(two_train_splits, "train-clean-100,train-clean-360")
    assert m.split == "train-clean-100+train-clean-360"
    assert m.num_utterances == a.num_utterances + b.num_utterances
    assert len(m.shards) == len(a.shards) + len(b.shards)
    paths = m.shard_paths()
    assert all(p.is_file() for p in paths)
    assert paths == a.shard_paths() + b.shard_paths()
    content = {**{("a", k): v for k, v in shard_content(two_train_splits, "train-clean-100").items()},
               **{("b", k): v for k, v in shard_content(two_train_splits, "train-clean-360").items()}}

    seen = []
    for rank in range(2):
        plan = plan_epoch(m, seed=1, epoch=0, rank=rank, world=2, workers=workers, opts=BatchOptions(max_frames=8000),
                          balance=False)
        batches = list(make_loader(m, plan))
        assert [x.rows.tolist() for x in batches] == rows_of(plan.sequence())
        for batch in batches:
            for i, r in enumerate(batch.rows.tolist()):
                src = ("a", m.keys[r]) if r < a.num_utterances else ("b", m.keys[r])
                t = int(batch.lengths[i])
                assert torch.equal(batch.feats[i, :t], torch.from_numpy(content[src][0]))
                seen.append(r)
    assert sorted(seen) == list(range(m.num_utterances))
    # Balanced training plans span shards of both splits.
    used = {s for r in range(2) for ws in plan_epoch(m, seed=1, epoch=0, rank=r, world=2, workers=workers,
                                                     opts=BatchOptions(max_frames=8000)).windows
            for w in ws for s in w.shards}
    names = {m.shards[s].name.split("/")[0] for s in used}
    assert names == {"train-clean-100", "train-clean-360"}


# ------------------------------------------------------------ 6. slicing samples at recorded offsets

def _without_offsets(m: Manifest) -> Manifest:
    import dataclasses
    return dataclasses.replace(m, feats_at=None, labels_at=None)


@pytest.mark.parametrize("split", [TRAIN, TEST])
def test_manifest_offsets_slice_the_same_samples_as_parsing_the_tar(tiny_shards, split, monkeypatch):
    m = mf.load(tiny_shards, split)
    assert m.feats_at is not None and len(m.feats_at) == m.num_utterances
    assert (m.labels_at >= 0).all() == m.labelled
    parsed = tdata.read_shards(_without_offsets(m), list(range(len(m.shards))))
    calls = []
    monkeypatch.setattr(tdata, "_parse_shard", lambda *a: calls.append(a) or {})
    sliced = tdata.read_shards(m, list(range(len(m.shards))))
    assert calls == [], "a shard with correct offsets must not be parsed"
    assert sorted(sliced) == sorted(parsed) == list(range(m.num_utterances))
    for r, (feats, labels) in parsed.items():
        assert sliced[r][0].dtype == np.float16 and np.array_equal(sliced[r][0], feats)
        assert (labels is None and sliced[r][1] is None) or np.array_equal(sliced[r][1], labels)


def test_wrong_offsets_fall_back_to_parsing(pipe, tiny_shards, tmp_path):
    shards = pipe.copy_tree(tiny_shards, tmp_path / "shards")
    good = mf.load(shards, TRAIN)
    bad = mf.load(shards, TRAIN)
    bad.feats_at = bad.feats_at + 512            # every offset one tar block off
    expected = tdata.read_shards(good, [0])
    got = tdata.read_shards(bad, [0])
    assert sorted(got) == sorted(expected)
    for r in expected:
        assert np.array_equal(got[r][0], expected[r][0])
    mf.save(bad, shards)
    from pipeline.verify import verify
    problems = verify(shards, [TRAIN])[TRAIN]
    assert any("member offset(s) differ from the manifest" in p for p in problems), problems


def test_manifest_offsets_survive_merge_and_dropping_shards(two_train_splits):
    m = mf.load_many(two_train_splits, "train-clean-100,train-clean-360")
    assert m.feats_at is not None and len(m.feats_at) == m.num_utterances
    kept = tdata.without_shards(m, [0])
    assert len(kept.feats_at) == len(kept.labels_at) == kept.num_utterances
    rows = tdata.read_shards(kept, list(range(len(kept.shards))))
    assert len(rows) == kept.num_utterances
    for r, (feats, labels) in rows.items():
        assert feats.shape == (kept.frames[r], 15) and len(labels) == kept.label_lens[r]


def test_manifest_without_offsets_still_loads_and_reads(pipe, tiny_shards, tmp_path):
    """A manifest written before the offsets were recorded: the tars are parsed instead."""
    shards = pipe.copy_tree(tiny_shards, tmp_path / "shards")
    m = mf.load(shards, TRAIN)
    expected = tdata.read_shards(m, list(range(len(m.shards))))
    mf.save(_without_offsets(m), shards)
    assert "feats_at" not in mf.manifest_path(shards, TRAIN).read_text()
    old = mf.load(shards, TRAIN)
    assert old.feats_at is None and old.labels_at is None
    got = tdata.read_shards(old, list(range(len(old.shards))))
    assert sorted(got) == sorted(expected)
    assert all(np.array_equal(got[r][0], expected[r][0]) for r in expected)


def test_rebuild_adds_crc32_to_an_old_manifest_without_rewriting_shards(pipe, tiny_corpus, tiny_shards, tmp_path):
    """A manifest from before the crc32 column: `phonerec shards` rewrites the manifest only."""
    shards = pipe.copy_tree(tiny_shards, tmp_path / "shards")
    m = mf.load(shards, TRAIN)
    for info in m.shards:
        info.crc32 = None
    mf.save(m, shards)
    assert '"crc32": null' in mf.manifest_path(shards, TRAIN).read_text()
    before = pipe.mtimes(shards)
    pipe.build(tiny_corpus, shards)
    new = mf.load(shards, TRAIN)
    assert [s.crc32 for s in new.shards] == [zlib.crc32(p.read_bytes()) for p in new.shard_paths()]
    assert pipe.mtimes(shards) == before
