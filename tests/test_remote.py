"""Shards at a URL: `phonerec publish`, `--verify`, train/predict/evaluate streaming over HTTP from a
real local server (tests/httpserver.py), with server errors, dropped connections, bytes changed in
transit, a server that goes away, and the local cache of verified shards.

Every network test publishes the `fast` shards once per module (`published`) and serves that
folder from a ShardServer started and stopped inside the test. Runs from a URL must give exactly
what the same run from the local folder gives (`assert_same_run`), faults included.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest

from pipeline import manifest as mf
from pipeline import remote
from pipeline.remote import FetchError, FetchPolicy, ShardCache
from tests.helpers import (DEV, MAX_FRAMES, TEST, TRAIN, assert_one_line_error, assert_same_run, cli, decode_args,
                           flip_feature_byte, load_last, metrics, temp_leftovers, train_args)
from tests.httpserver import ShardServer
from training.plan import BatchOptions, plan_epoch

pytestmark = pytest.mark.usefixtures("one_thread")

ONE_EPOCH = ("--epochs", "1", "--dev", "")
TWO_EPOCHS = ("--epochs", "2", "--dev", "")
NET = ("--fetch-backoff", "0.01")           # retries still happen, but fast


# ------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def source_shards(pipe, fast, tmp_path_factory) -> Path:
    """A copy of the fast shards (publish writes a temp index.json beside them)."""
    return pipe.copy_tree(fast[1], tmp_path_factory.mktemp("remote_src") / "shards")


@pytest.fixture(scope="module")
def published(source_shards, tmp_path_factory) -> Path:
    """The fast shards published (`phonerec publish --to file://...`) once: the folder the servers serve.
    Read-only for the tests."""
    dst = tmp_path_factory.mktemp("remote_pub") / "pub"
    res = cli("publish", "--shards", source_shards, "--to", f"file://{dst}", "--quiet")
    assert f"check it with: phonerec shards --verify --shards file://{dst}" in res.output
    return dst


@pytest.fixture
def server(published):
    with ShardServer(published) as srv:
        yield srv


@pytest.fixture(scope="module")
def local_run(fast, tmp_path_factory):
    """local_run(*extra): the same `phonerec train` from the local fast shards (run once per options)."""
    done: dict[tuple, Path] = {}

    def get(*extra) -> Path:
        key = tuple(map(str, extra))
        if key not in done:
            run = tmp_path_factory.mktemp("remote_local")
            cli(*train_args(fast[1], run, *extra))
            done[key] = run
        return done[key]
    return get


def rel(m: mf.Manifest, s: int) -> str:
    """Shard s's path relative to the served folder (what ShardServer's faults and counts take)."""
    return f"{m.split}/{m.shards[s].name}"


def read_order(m: mf.Manifest, workers: int = 0) -> list[list]:
    """The training plan's first epoch windows (single stream): the order shards are read."""
    return plan_epoch(m, seed=0, epoch=0, workers=workers, opts=BatchOptions(max_frames=MAX_FRAMES)).windows[0]


def network_line(net: dict) -> str:
    return (f"shards over the network: {net['fetched']} fetched ({net['bytes'] / 1e6:.1f} MB), "
            f"{net['retries']} retried, {net['refetched']} fetched again after a bad checksum, "
            f"{net['cache_hits']} from the cache")


def flip(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------- 1. publishing

def test_published_tree_verifies_over_http(fast, source_shards, published):
    data = fast[0]
    splits = [TRAIN, DEV, TEST]
    # What was published: every shard, manifest, index.json, the reports; not the zarr stores.
    assert (source_shards / "store").is_dir() and not (published / "store").exists()
    want = {"index.json", "rejected.tsv", "stats.json"}
    for split in splits:
        m = mf.load(source_shards, split)
        want |= {f"{split}/manifest.json", *(f"{split}/{s.name}" for s in m.shards)}
    got = {str(p.relative_to(published)) for p in published.rglob("*") if p.is_file()}
    assert got == want
    for name in want - {"index.json"}:
        assert (published / name).read_bytes() == (source_shards / name).read_bytes(), name
    assert json.loads((published / "index.json").read_text()) == {
        "splits": sorted(splits),
        "manifests": {s: hashlib.sha256((source_shards / s / "manifest.json").read_bytes()).hexdigest()
                      for s in sorted(splits)}}
    assert temp_leftovers(published) == [] and temp_leftovers(source_shards) == []

    with ShardServer(published) as srv:
        assert mf.available_splits(srv.url) == sorted(splits)
        m = mf.load(srv.url, TRAIN)
        assert m.remote and m.location == f"{srv.url}/{TRAIN}"
        assert m.shard_locations() == [f"{srv.url}/{TRAIN}/{s.name}" for s in m.shards]
        res = cli("shards", "--verify", "--shards", srv.url, "--data", data)
        assert [line for line in res.output.splitlines() if line.split(":")[0] in splits] == \
            [f"{s}: OK" for s in splits]
        # --verify really read every shard over HTTP...
        assert all(srv.gets(rel(m, s)) >= 1 for s in range(len(m.shards)))
        # ... and so finds a shard that arrives changed.
        srv.corrupt(rel(m, 2), offset=m.shards[2].bytes // 2, times=None)
        res = cli("shards", "--verify", "--shards", srv.url, "--data", data, ok=False)
        assert f"{TRAIN}: 1 problem(s)" in res.output
        assert f"{TRAIN}/{m.shards[2].name}: sha256 differs from the manifest" in res.output
        assert f"{DEV}: OK" in res.output
        assert_one_line_error(res, "1 problem(s)")


def test_publish_writes_manifests_last_and_removes_old_ones_first(fast, source_shards, tmp_path, monkeypatch):
    import pipeline.publish as pub
    target = tmp_path / "target"
    copies: list[tuple[str, set[str]]] = []      # (file copied, the manifests and index there at that moment)
    real = pub.write_bytes

    def spy(dst, data):
        there = {str(p.relative_to(target)) for p in target.rglob("*.json")
                 if p.name in ("manifest.json", "index.json")} if target.is_dir() else set()
        copies.append((str(Path(dst).relative_to(target)), there))
        real(dst, data)

    monkeypatch.setattr(pub, "write_bytes", spy)
    splits = [DEV, TEST, TRAIN]

    def check_order() -> list[str]:
        order = [name for name, _ in copies]
        assert order[-1] == "index.json" and order.count("index.json") == 1
        for split in splits:
            tars = [i for i, name in enumerate(order) if name.startswith(f"{split}/") and name.endswith(".tar")]
            assert len(tars) == len(mf.load(source_shards, split).shards)
            assert order.index(f"{split}/manifest.json") > max(tars), (split, order)
        assert max(order.index(n) for n in ("rejected.tsv", "stats.json")) < \
            min(order.index(f"{s}/manifest.json") for s in splits)
        return order

    cli("publish", "--shards", source_shards, "--to", target, "--quiet")
    first = check_order()
    assert "OK" in cli("shards", "--verify", "--shards", target, "--data", fast[0]).output

    # Republishing over the complete target: the old manifests and index.json are gone before any
    # shard is copied (a reader never pairs an old manifest with new shards).
    copies.clear()
    assert (target / TRAIN / "manifest.json").is_file() and (target / "index.json").is_file()
    cli("publish", "--shards", source_shards, "--to", target, "--quiet")
    assert check_order() == first
    assert copies[0][1] == set()
    for name, there in copies:
        if name.endswith(".tar"):
            assert there == set(), (name, there)
    assert temp_leftovers(target) == [] and temp_leftovers(source_shards) == []

    # One split republished: its manifest goes first and comes back last; index.json keeps every split.
    copies.clear()
    before = {s: (target / s / "manifest.json").stat().st_mtime_ns for s in (DEV, TEST)}
    cli("publish", "--shards", source_shards, "--to", target, "--split", TRAIN, "--quiet")
    order = [name for name, _ in copies]
    assert {n.split("/")[0] for n in order if "/" in n} == {TRAIN}
    assert order[-2:] == [f"{TRAIN}/manifest.json", "index.json"]
    for name, there in copies:
        if name.endswith(".tar"):
            assert there == {f"{DEV}/manifest.json", f"{TEST}/manifest.json"}, (name, there)
    assert json.loads((target / "index.json").read_text())["splits"] == sorted(splits)
    assert {s: (target / s / "manifest.json").stat().st_mtime_ns for s in (DEV, TEST)} == before
    assert "OK" in cli("shards", "--verify", "--shards", target, "--data", fast[0]).output


def test_publish_to_http_is_refused(source_shards, published):
    with ShardServer(published) as srv:
        res = cli("publish", "--shards", source_shards, "--to", f"{srv.url}/elsewhere", "--quiet", ok=False)
        assert_one_line_error(res, f"cannot publish to {srv.url}/elsewhere", "read-only")
        assert sum(srv.requests.values()) == 0


def test_publish_refuses_a_truncated_shard(pipe, fast, tmp_path):
    shards = pipe.copy_tree(fast[1], tmp_path / "shards")
    m = mf.load(shards, DEV)
    victim = m.shard_paths()[3]
    victim.write_bytes(victim.read_bytes()[:-700])
    res = cli("publish", "--shards", shards, "--to", f"file://{tmp_path}/pub", "--quiet", ok=False)
    assert_one_line_error(res, f"{DEV}/{victim.name}", f"the manifest says {m.shards[3].bytes}", "--verify")
    assert not (tmp_path / "pub").exists()                      # refused before anything was written


def test_publish_refuses_a_shard_damaged_in_place(pipe, fast, tmp_path):
    shards = pipe.copy_tree(fast[1], tmp_path / "shards")
    victim = flip_feature_byte(mf.load(shards, DEV), 2)
    res = cli("publish", "--shards", shards, "--to", tmp_path / "pub", "--quiet", ok=False)
    assert_one_line_error(res, f"{DEV}/{victim.name}")
    assert not (tmp_path / "pub").exists()


# ------------------------------------------------------------------------- 2. training from a URL

@pytest.mark.parametrize("workers", [0, 2])
def test_training_from_url_is_identical_to_local(published, server, local_run, tmp_path, workers):
    """With the dev split too: its shards are fetched every epoch for the evaluation."""
    extra = ("--epochs", "1", "--workers", workers)
    res = cli(*train_args(server.url, tmp_path, *extra, *NET))
    assert f"1 rank(s) x {max(workers, 1)} stream(s)" in res.output
    assert_same_run(local_run(*extra), tmp_path, dev=True)
    tm, dm = mf.load(published, TRAIN), mf.load(published, DEV)
    [row] = metrics(tmp_path)
    n = len(tm.shards) + len(dm.shards)
    assert row["network"] == {"fetched": n, "retries": 0, "refetched": 0, "cache_hits": 0,
                              "bytes": sum(s.bytes for s in tm.shards + dm.shards)}
    assert network_line(row["network"]) in res.output
    for m in (tm, dm):
        assert [server.gets(rel(m, s)) for s in range(len(m.shards))] == [1] * len(m.shards)


def test_local_training_has_no_network_record(local_run):
    assert all("network" not in row for row in metrics(local_run(*ONE_EPOCH)))


# ------------------------------------------------------------------------- 3. faults in transit

@pytest.mark.parametrize("fault", ["status500", "drop", "corrupt"])
def test_transient_fault_is_retried_and_the_run_is_identical(published, server, local_run, tmp_path, fault):
    m = mf.load(published, TRAIN)
    s = read_order(m)[1].shards[0]
    victim = rel(m, s)
    if fault == "status500":
        server.fail(victim, status=500, times=2)
        want = {"retries": 2, "refetched": 0, "gets": 3}
    elif fault == "drop":
        server.drop(victim, after=1000)           # the full Content-Length announced, 1000 bytes sent
        want = {"retries": 1, "refetched": 0, "gets": 2}
    else:
        server.corrupt(victim, offset=m.shards[s].bytes // 2)       # checksum catches it: fetched again
        want = {"retries": 0, "refetched": 1, "gets": 2}
    res = cli(*train_args(server.url, tmp_path, *ONE_EPOCH, *NET))
    assert_same_run(local_run(*ONE_EPOCH), tmp_path)
    [row] = metrics(tmp_path)
    extra = want["refetched"]
    assert row["network"] == {"fetched": len(m.shards) + extra, "retries": want["retries"],
                              "refetched": want["refetched"], "cache_hits": 0,
                              "bytes": sum(i.bytes for i in m.shards) + extra * m.shards[s].bytes}
    assert network_line(row["network"]) in res.output
    assert f"{want['retries']} retried, {want['refetched']} fetched again" in res.output
    assert server.gets(victim) == want["gets"]
    assert all(server.gets(rel(m, o)) == 1 for o in range(len(m.shards)) if o != s)


def test_shard_corrupted_on_every_download_stops_with_checkpoint_then_resumes(published, server, local_run,
                                                                               tmp_path):
    m = mf.load(published, TRAIN)
    windows = read_order(m)
    victim_no = windows[-1].shards[-1]                          # read last in the epoch
    steps_before = sum(len(w.batches) for w in windows[:-1])
    assert steps_before > 0
    victim = rel(m, victim_no)
    url = f"{server.url}/{victim}"
    server.corrupt(victim, offset=m.shards[victim_no].bytes // 3, times=None)

    res = cli(*train_args(server.url, tmp_path, *ONE_EPOCH, *NET), ok=False)
    assert_one_line_error(res, url, "crc32 differs", "fetched twice", "phonerec publish", "[training data, epoch 1",
                          f"checkpoint written at epoch 1, step {steps_before}", "--resume")
    assert server.gets(victim) == 2                             # once more after the failed checksum, no more
    state = load_last(tmp_path)
    assert (state.epoch, state.step, state.global_step) == (0, steps_before, steps_before)
    assert metrics(tmp_path) == []

    # The server repaired (a fresh one, no faults): --resume finishes as if nothing had happened.
    with ShardServer(published) as fresh:
        res = cli(*train_args(fresh.url, tmp_path, *ONE_EPOCH, *NET, "--resume"))
        assert f"resumed at epoch 1, step {steps_before}" in res.output
        assert fresh.gets(victim) == 1
        assert sum(fresh.gets(rel(m, s)) for s in range(len(m.shards))) == len(windows[-1].shards)
    assert_same_run(local_run(*ONE_EPOCH), tmp_path)


def test_server_gone_mid_run_keeps_the_checkpoint(published, local_run, tmp_path, monkeypatch):
    """The server stops after step `stop_at` (past the first checkpoint of --checkpoint-every 2):
    the next shard read fails after its retries, with a checkpoint at the step reached."""
    import training.train as ttrain
    m = mf.load(published, TRAIN)
    windows = read_order(m)
    starts = [sum(len(w.batches) for w in windows[:j]) for j in range(len(windows))]
    stop_at = min(c for c in starts if c >= 2)                  # a window is read after exactly this step
    assert stop_at < sum(len(w.batches) for w in windows)
    stopped_at: list[float] = []
    srv = ShardServer(published).start()
    real = ttrain.train

    def stop_server(st) -> bool:
        if st.step == stop_at and not stopped_at:
            srv.stop()
            stopped_at.append(time.monotonic())
        return False                                            # keep training: the next read fails

    monkeypatch.setattr(ttrain, "train", lambda cfg, log=print, on_step=None: real(cfg, log, stop_server))
    try:
        res = cli(*train_args(srv.url, tmp_path, *ONE_EPOCH, "--checkpoint-every", "2", "--fetch-retries", "2",
                              "--fetch-backoff", "0.05"), ok=False)
    finally:
        srv.stop()
    took = time.monotonic() - stopped_at[0]
    line = assert_one_line_error(res, f"cannot read {srv.url}/{TRAIN}/", "after 3 tries",
                                 "the shard could not be fetched", "[training data, epoch 1",
                                 f"checkpoint written at epoch 1, step {stop_at}")
    assert line.split(f"{srv.url}/")[1].split(" ")[0] in {rel(m, s) for s in windows[starts.index(stop_at)].shards}
    assert took < 30, took                                      # 2 retries after 0.05 + 0.1 s, not minutes
    state = load_last(tmp_path)
    assert (state.epoch, state.step) == (0, stop_at)

    monkeypatch.setattr(ttrain, "train", real)
    with ShardServer(published) as fresh:
        cli(*train_args(fresh.url, tmp_path, *ONE_EPOCH, *NET, "--resume"))
    assert_same_run(local_run(*ONE_EPOCH), tmp_path)


def test_server_gone_before_the_start_is_one_line(published, tmp_path):
    srv = ShardServer(published).start()
    url = srv.url
    srv.stop()
    t0 = time.monotonic()
    res = cli(*train_args(url, tmp_path, *ONE_EPOCH, "--fetch-retries", "1", "--fetch-backoff", "0.01"), ok=False)
    assert_one_line_error(res, f"cannot read {url}/{TRAIN}/manifest.json", "after 2 tries")
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "weights" / "last.pt").exists()


# ------------------------------------------------------------------------- 4. the shard cache

def test_cache_serves_later_epochs_and_replaces_a_damaged_file(published, server, local_run, tmp_path):
    m = mf.load(published, TRAIN)
    cache = tmp_path / "cache"
    n, total = len(m.shards), sum(s.bytes for s in m.shards)
    cli(*train_args(server.url, tmp_path / "a", *TWO_EPOCHS, *NET, "--shard-cache", cache))
    assert_same_run(local_run(*TWO_EPOCHS), tmp_path / "a")
    rows = metrics(tmp_path / "a")
    assert [r["network"] for r in rows] == [
        {"fetched": n, "retries": 0, "refetched": 0, "cache_hits": 0, "bytes": total},
        {"fetched": n, "retries": 0, "refetched": 0, "cache_hits": n, "bytes": total}]   # counted since the start
    assert [server.gets(rel(m, s)) for s in range(n)] == [1] * n
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s.sha256}.tar" for s in m.shards)
    for s, path in zip(m.shards, m.shard_paths()):
        assert (cache / f"{s.sha256}.tar").read_bytes() == path.read_bytes()

    # A cached file with a byte changed on disk: the crc32 catches it, it is dropped and fetched again.
    bad = read_order(m)[0].shards[0]
    cached = cache / f"{m.shards[bad].sha256}.tar"
    flip(cached)
    with ShardServer(published) as fresh:
        cli(*train_args(fresh.url, tmp_path / "b", *ONE_EPOCH, *NET, "--shard-cache", cache))
        assert [fresh.gets(rel(m, s)) for s in range(n)] == [int(s == bad) for s in range(n)]
    assert_same_run(local_run(*ONE_EPOCH), tmp_path / "b")
    [row] = metrics(tmp_path / "b")
    assert row["network"] == {"fetched": 1, "retries": 0, "refetched": 0, "cache_hits": n - 1,
                              "bytes": m.shards[bad].bytes}
    assert cached.read_bytes() == m.shard_paths()[bad].read_bytes()
    assert temp_leftovers(cache) == []


def test_cache_size_limit_in_a_run(published, server, tmp_path):
    """--shard-cache-size with a K suffix: room for any two shards, never three."""
    m = mf.load(published, TRAIN)
    sizes = sorted(s.bytes for s in m.shards)
    most_two, least_three = sum(sizes[-2:]), sum(sizes[:3])
    limit_k = most_two // 1024 + 1
    assert limit_k * 1024 < least_three, sizes
    cache = tmp_path / "cache"
    cli(*train_args(server.url, tmp_path, *ONE_EPOCH, *NET, "--shard-cache", cache,
                    "--shard-cache-size", f"{limit_k}K"))
    kept = list(cache.glob("*.tar"))
    assert len(kept) == 2 and sum(p.stat().st_size for p in kept) <= limit_k * 1024
    last = read_order(m)[-1].shards[-1]                         # the one put last is never evicted
    assert cache / f"{m.shards[last].sha256}.tar" in kept
    assert {p.name for p in kept} <= {f"{s.sha256}.tar" for s in m.shards}


def test_bad_cache_size_is_one_line(published, tmp_path):
    runs = [decode_args(command, f"file://{published}", tmp_path / "nowhere.pt", tmp_path / "r",
                        "--shard-cache-size", "lots") for command in ("predict", "evaluate")]
    runs.append(train_args(f"file://{published}", tmp_path / "t", *ONE_EPOCH, "--shard-cache", tmp_path / "c",
                           "--shard-cache-size", "lots"))
    for args in runs:                   # a usage error (exit status 2) before anything is written
        res = cli(*args, ok=False)
        assert res.exit_code == 2 and "Traceback" not in res.output
        [line] = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
        assert "--shard-cache-size" in line and "'lots' is not a size" in line
    assert not (tmp_path / "t").exists() and not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_shard_cache_evicts_least_recently_used(tmp_path):
    cache = ShardCache(tmp_path / "c", max_bytes=250)
    blob = {k: bytes([i]) * 100 for i, k in enumerate("abcdef")}
    sha = {k: k * 64 for k in blob}                              # cache files are named by sha256

    def files() -> set[str]:
        return {p.stem[0] for p in (tmp_path / "c").glob("*.tar")}

    def total() -> int:
        return sum(p.stat().st_size for p in (tmp_path / "c").glob("*.tar"))

    def age(**mtimes) -> None:
        for k, t in mtimes.items():
            os.utime(cache.path(sha[k]), (t, t))

    cache.put(sha["a"], blob["a"])
    cache.put(sha["b"], blob["b"])
    assert files() == {"a", "b"} and cache.path(sha["a"]).name == f"{sha['a']}.tar"
    age(a=1000, b=2000)
    cache.put(sha["c"], blob["c"])                                   # 300 > 250: the oldest (a) goes
    assert files() == {"b", "c"} and total() <= 250
    age(b=3000, c=4000)
    assert cache.get(sha["b"], 100) == blob["b"]                     # reading b makes c the least recently used
    cache.put(sha["d"], blob["d"])
    assert files() == {"b", "d"}
    assert cache.get(sha["b"], 99) is None and cache.get("0" * 64, 100) is None
    cache.put(sha["e"], b"x" * 251)                                  # bigger than the limit: never kept
    assert files() == {"b", "d"}
    future = time.time() + 10 ** 6
    age(b=future, d=future + 1)                                 # the new file is the oldest: kept anyway
    cache.put(sha["f"], blob["f"])
    assert files() == {"d", "f"} and total() <= 250
    cache.drop(sha["d"])
    cache.drop(sha["d"])                                             # dropping twice is harmless
    assert files() == {"f"}
    assert temp_leftovers(tmp_path) == []

    unlimited = ShardCache(tmp_path / "u")
    for k, b in blob.items():
        unlimited.put(sha[k], b)
    assert unlimited.evict() == [] and len(list((tmp_path / "u").glob("*.tar"))) == len(blob)


# ------------------------------------------------------------------------- 5. predict and evaluate

@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_decoding_from_url_is_identical_to_local(fast, published, server, local_run, tmp_path, command):
    weights = local_run(*ONE_EPOCH) / "weights"
    split = TEST if command == "predict" else DEV
    cli(*decode_args(command, fast[1], weights, tmp_path / "local"))
    res = cli(*decode_args(command, server.url, weights, tmp_path / "url", *NET))
    m = mf.load(published, split)
    names = ["submission.csv", f"predict-{split}.tsv"] if command == "predict" else [f"evaluate-{split}.tsv"]
    for name in names:
        assert (tmp_path / "url" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    if command == "predict":
        assert (tmp_path / "url" / "submission.csv").read_text().count("\n") == 1 + m.inputs
    else:
        a, b = (json.loads((tmp_path / d / f"evaluate-{split}.json").read_text()) for d in ("local", "url"))
        assert a.pop("tsv") != b.pop("tsv") and a == b and a["utterances"] == m.num_utterances
    # Each shard read once: evaluate scores with the references the decoding pass kept.
    net = {"fetched": len(m.shards), "retries": 0, "refetched": 0, "cache_hits": 0,
           "bytes": sum(s.bytes for s in m.shards)}
    assert network_line(net) in res.stderr
    assert [server.gets(rel(m, s)) for s in range(len(m.shards))] == [1] * len(m.shards)


# ------------------------------------------------------------------------- 6. remote.py units

def test_transient_classification():
    class Status(Exception):
        def __init__(self, status):
            super().__init__(f"status {status}")
            self.status = status

    for exc in (ConnectionResetError(), ConnectionRefusedError(), TimeoutError(), EOFError(), Status(500),
                Status(503), Status(408), Status(429), aiohttp.ClientPayloadError("cut short")):
        assert remote.transient(exc), exc
    for exc in (FileNotFoundError(), PermissionError(), IsADirectoryError(), Status(404), Status(403),
                Status(400), FetchError("x"), ValueError("x"), KeyError("x")):
        assert not remote.transient(exc), exc


def test_with_retries_counts_and_gives_up():
    policy = FetchPolicy(retries=2, backoff=0.001)
    counted: list[tuple[str, int]] = []
    calls = []

    def flaky(failures, exc):
        def fn():
            calls.append(1)
            if len(calls) <= failures:
                raise exc
            return "ok"
        return fn

    assert remote.with_retries("u", flaky(2, ConnectionResetError("reset")), policy,
                               lambda k, n: counted.append((k, n))) == "ok"
    assert counted == [("retries", 1), ("retries", 1)] and len(calls) == 3
    calls.clear()
    with pytest.raises(FetchError, match=r"^cannot read u after 3 tries \(ConnectionResetError: reset\)$"):
        remote.with_retries("u", flaky(99, ConnectionResetError("reset")), policy)
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(FetchError, match=r"^cannot read u \(PermissionError: no\)$"):
        remote.with_retries("u", flaky(99, PermissionError("no")), policy)
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(FileNotFoundError):
        remote.with_retries("u", flaky(99, FileNotFoundError("gone")), policy)
    assert len(calls) == 1
    assert FetchPolicy(backoff=0.5).delay(0) == 0.5 and FetchPolicy(backoff=0.5).delay(10) == 8.0


def test_read_bytes_and_size_over_http(published, server):
    m = mf.load(published, TRAIN)
    victim, url = rel(m, 0), f"{server.url}/{rel(m, 0)}"
    policy = FetchPolicy(retries=2, backoff=0.001, timeout=10)
    counts: dict[str, int] = {}

    def count(k, n):
        counts[k] = counts.get(k, 0) + n

    assert remote.size(url, policy) == m.shards[0].bytes
    assert remote.size(f"{server.url}/{TRAIN}/nothing.tar", policy) is None
    with pytest.raises(FileNotFoundError):
        remote.read_bytes(f"{server.url}/{TRAIN}/nothing.tar", policy)
    server.fail(victim, status=503, times=1)
    assert remote.read_bytes(url, policy, count) == m.shard_paths()[0].read_bytes()
    assert counts == {"retries": 1, "fetched": 1, "bytes": m.shards[0].bytes}
    assert server.gets(victim) == 2
    server.fail(victim, status=503, times=None)
    with pytest.raises(FetchError, match=rf"^cannot read {url} after 3 tries \(HTTP 503\)$"):
        remote.read_bytes(url, policy)
    assert server.gets(victim) == 5
    server2 = ShardServer(published)
    with server2:
        server2.fail(victim, status=403, times=None)             # refused: not retried
        with pytest.raises(FetchError, match=r"\(HTTP 403\)$") as err:
            remote.read_bytes(f"{server2.url}/{victim}", policy)
        assert "tries" not in str(err.value) and server2.gets(victim) == 1


def test_join_parent_and_is_url():
    assert remote.is_url("http://h:8/a") and remote.is_url("s3://b/k") and remote.is_url("file:///tmp/x")
    assert not remote.is_url("/tmp/x") and not remote.is_url("shards") and not remote.is_url(Path("/tmp/x"))
    assert remote.join("http://h:8/a/", "b", "/c/", "d.tar") == "http://h:8/a/b/c/d.tar"
    assert remote.join("/srv/shards", TRAIN, "manifest.json") == f"/srv/shards/{TRAIN}/manifest.json"
    assert remote.join("shards", "x") == str(Path("shards") / "x")
    url = f"http://127.0.0.1:8000/pub/{TRAIN}/{TRAIN}-000001.tar"
    assert remote.parent(url) == f"http://127.0.0.1:8000/pub/{TRAIN}"
    assert remote.parent(url, 2) == "http://127.0.0.1:8000/pub"
    assert remote.parent("http://h/a/b/", 1) == "http://h/a"
    assert remote.parent("http://h/a", 5) == "http://h"              # never above the host
    assert remote.parent("s3://bucket/x/y.tar", 2) == "s3://bucket"
    assert remote.parent("file:///tmp/pub/s/x.tar", 2) == "file:///tmp/pub"
    assert remote.parent("/tmp/pub/s/x.tar", 2) == "/tmp/pub"
    assert remote.parent("/tmp/pub/s/x.tar") == "/tmp/pub/s"


def test_parse_size():
    K = 1024
    cases = {"0": 0, "100": 100, "1K": K, "1k": K, "2KiB": 2 * K, "3kb": 3 * K, "500M": 500 * K ** 2,
             "20G": 20 * K ** 3, "1.5T": int(1.5 * K ** 4), " 7 G ": 7 * K ** 3, 4096: 4096}
    for text, want in cases.items():
        assert remote.parse_size(text) == want, text
    for bad in ("lots", "", "-1K", "1X", "K", "1.2.3M", "10 GBs"):
        with pytest.raises(ValueError, match="is not a size"):
            remote.parse_size(bad)


# ---------------------------------------------------------------- an object store (no HTTP)

def test_object_store_url_publish_verify_and_train(fast, source_shards, local_run, tmp_path):
    """s3:// and gs:// go through fsspec's object-store path (put objects whole, list without an
    index): fsspec's in-memory store stands in for them here. Publish, a listing without index.json,
    --verify and a training run equal to the local one."""
    import fsspec
    store = fsspec.filesystem("memory")
    url = f"memory://phonerec-test-{os.getpid()}/shards"
    try:
        cli("publish", "--shards", source_shards, "--to", url, "--quiet")
        cli("publish", "--shards", source_shards, "--to", url, "--quiet")     # over itself: old objects removed first
        names = sorted(p.split("/shards/", 1)[1] for p in store.find(url[len("memory://"):]))
        assert f"{TRAIN}/manifest.json" in names and "index.json" in names and not any("store" in n for n in names)
        assert mf.available_splits(url) == sorted([DEV, TEST, TRAIN])
        store.rm_file(f"{url[len('memory://'):]}/index.json")           # listed by the store instead
        assert mf.available_splits(url) == sorted([DEV, TEST, TRAIN])
        res = cli("shards", "--verify", "--shards", url, "--data", fast[0])
        assert [ln for ln in res.output.splitlines() if ln.endswith("OK")] == [f"{s}: OK" for s in (TRAIN, DEV, TEST)]
        cli(*train_args(url, tmp_path, *ONE_EPOCH))       # in-process loading: the store lives in this process
        assert_same_run(local_run(*ONE_EPOCH), tmp_path)
        assert metrics(tmp_path)[0]["network"]["fetched"] == len(mf.load(url, TRAIN).shards)
    finally:
        store.rm(url[len("memory://"):].split("/")[0], recursive=True)


def test_verify_over_http_takes_the_fetch_options(fast, published, server):
    """`shards --verify` retries as the readers do, with the same options (--fetch-retries ...)."""
    m = mf.load(published, TRAIN)
    server.fail(rel(m, 1), 500, times=2)
    res = cli("shards", "--verify", "--shards", server.url, "--data", fast[0], "--fetch-backoff", "0.01")
    assert f"{TRAIN}: OK" in res.output and server.gets(rel(m, 1)) == 3
    server.fail(rel(m, 1), 503, times=1)
    res = cli("shards", "--verify", "--shards", server.url, "--fetch-retries", "0", ok=False)
    assert f"{TRAIN}/{m.shards[1].name}: unreadable (cannot read {server.url}/{rel(m, 1)} after 1 try (HTTP 503))" \
        in res.output
    assert_one_line_error(res, "1 problem(s)")


def test_shard_cache_removes_temp_files_of_dead_writers(tmp_path):
    """A loader worker killed mid-put (a stopped run) leaves `.<sha>.tar.tmp<pid>`: the next cache
    on that folder removes it, and leaves a running process's write in progress alone."""
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / "c"
    folder.mkdir()
    orphan = folder / f".{'a' * 64}.tar.tmp{dead.pid}"
    live = folder / f".{'b' * 64}.tar.tmp{os.getpid()}"
    kept = folder / f"{'c' * 64}.tar"
    for p in (orphan, live, kept):
        p.write_bytes(b"x" * 10)
    ShardCache(folder)
    assert not orphan.exists() and live.exists() and kept.exists()
