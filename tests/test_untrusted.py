"""A shards server nobody vouches for (README: Trust): every field of what it serves is validated,
every path built from it stays under its root, every download is bounded in bytes and time, a
transient failure is retried and only a 404 is "missing", Ctrl-C/SIGTERM during a stalled fetch
still checkpoints and exits 130, a pinned index digest proves what was published, and every
numeric option has a range.

The server is tests/httpserver.py's ShardServer on 127.0.0.1, serving a copy of the fast shards
published once per module; a test that edits what is served works on its own copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline import manifest as mf
from pipeline import remote
from pipeline.publish import Target
from pipeline.remote import ConfinementError, FetchError, FetchPolicy, Oversized, ShardCache
from tests.helpers import (DEV, ROOT, TEST, TRAIN, assert_one_line_error, assert_usage_error, cli, decode_args, popen,
                           subprocess_env, train_args)
from tests.httpserver import ShardServer

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = FetchPolicy(retries=1, backoff=0.01, timeout=2.0)
NET = ("--fetch-backoff", "0.01", "--fetch-retries", "1")


@pytest.fixture(scope="module")
def published(pipe, fast, tmp_path_factory) -> tuple[Path, Path, str]:
    """(source shards, the folder they were published to, the index digest publish printed)."""
    src = pipe.copy_tree(fast[1], tmp_path_factory.mktemp("untrusted_src") / "shards")
    dst = tmp_path_factory.mktemp("untrusted_pub") / "pub"
    res = cli("publish", "--shards", src, "--to", dst, "--quiet")
    [digest] = re.findall(r"^index digest: sha256 ([0-9a-f]{64})$", res.output, re.M)
    assert f"--shards '{dst}#sha256={digest}'" in res.output
    assert hashlib.sha256((dst / mf.INDEX_NAME).read_bytes()).hexdigest() == digest
    return src, dst, digest


@pytest.fixture
def served(published, tmp_path):
    """A copy of the published folder (the test may make it hostile) and a server for it."""
    folder = shutil.copytree(published[1], tmp_path / "served")
    with ShardServer(folder) as srv:
        yield folder, srv


def rewrite(path: Path, change) -> None:
    """Edit a manifest's JSON and give it a matching digest (a hostile server can compute one)."""
    raw = json.loads(path.read_text())
    change(raw)
    raw.pop("digest", None)
    raw["digest"] = mf._digest(raw)
    path.write_text(json.dumps(raw))


def first_shard(folder: Path, split: str = TRAIN) -> tuple[str, int]:
    """(path of the split's first shard relative to the served folder, its size)."""
    info = json.loads((folder / split / mf.MANIFEST_NAME).read_text())["shards"][0]
    return f"{split}/{info['name']}", info["bytes"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -------------------------------------------------------------- 1. what is served is validated

def _set(path: list, value):
    def change(raw):
        d = raw
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return change


def _drop(path: list):
    def change(raw):
        d = raw
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
    return change


HOSTILE_FIELDS = {
    "sha256 climbing out": (_set(["shards", 0, "sha256"], "../../../victim"), "shards[0].sha256"),
    "sha256 absolute": (_set(["shards", 0, "sha256"], "/tmp/victim"), "shards[0].sha256"),
    "sha256 upper case": (_set(["shards", 0, "sha256"], "A" * 64), "shards[0].sha256"),
    "shard name climbing out": (_set(["shards", 0, "name"], "../../evil.tar"), "shards[0].name"),
    "shard name of another split": (_set(["shards", 0, "name"], f"{DEV}-000000.tar"), "shards[0].name"),
    "split not the folder": (_set(["split"], DEV), "'split'"),
    "split climbing out": (_set(["split"], "../x"), "'split'"),
    "utterances missing": (_drop(["utterances"]), "'utterances' is missing"),
    "frames not a list": (_set(["utterances", "frames"], "many"), "utterances.frames"),
    "a frame count a float": (lambda raw: raw["utterances"]["frames"].__setitem__(0, 1.5), "utterances.frames"),
    "a key with a dot": (lambda raw: raw["utterances"]["key"].__setitem__(0, "../a.b"), "utterances.key"),
    "negative shard bytes": (_set(["shards", 0, "bytes"], -5), "shards[0].bytes"),
    "crc32 too large": (_set(["shards", 0, "crc32"], 2**40), "shards[0].crc32"),
    "shards an object": (_set(["shards"], {"a": 1}), "'shards' is dict"),
    "a zero std": (lambda raw: raw["stats"]["std"].__setitem__(0, 0.0), "stats.std"),
    "labelled a string": (_set(["labelled"], "yes"), "'labelled' is str"),
    "template header not a list": (_set(["template"], {"file": "x", "header": "a,b", "rows": 1}), "template.header"),
    "seed a bool": (_set(["seed"], True), "'seed' is bool"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FIELDS))
def test_every_field_is_checked_before_use(served, case):
    folder, srv = served
    change, words = HOSTILE_FIELDS[case]
    split = TEST if case.startswith("template") else TRAIN
    rewrite(folder / split / mf.MANIFEST_NAME, change)
    with pytest.raises(mf.ManifestError) as err:
        mf.load(srv.url, split)
    text = str(err.value)
    assert "\n" not in text and f"{srv.url}/{split}/{mf.MANIFEST_NAME}" in text and words in text, text


def test_hostile_json_is_one_line(served, tmp_path):
    folder, srv = served
    where = folder / TRAIN / mf.MANIFEST_NAME
    where.write_text("[" * 200_000 + "]" * 200_000)                       # exhausts a recursive parser
    with pytest.raises(mf.ManifestError, match="nested too deeply"):
        mf.load(srv.url, TRAIN)
    where.write_text(json.dumps({"format": 1, "pad": "x" * (2 * 2**20)}))   # 2 MB: over a 1 MB cap
    with pytest.raises(Oversized, match=r"over the 1 MiB limit .*--max-manifest-size"):
        mf.load(srv.url, TRAIN, FetchPolicy(max_manifest=2**20))
    res = cli(*train_args(srv.url, tmp_path / "run", "--max-manifest-size", "1M", "--epochs", "1"), ok=False)
    assert_one_line_error(res, "--max-manifest-size", f"{srv.url}/{TRAIN}/{mf.MANIFEST_NAME}")
    (folder / mf.INDEX_NAME).write_text(json.dumps({"splits": ["../../etc", TRAIN]}))
    with pytest.raises(mf.ManifestError, match=r"field 'splits' holds '\.\./\.\./etc'"):
        mf.available_splits(srv.url)


# ------------------------------------------------------------- 2. paths stay under their roots

def test_confined_joins_stay_under_their_root(tmp_path):
    assert remote.confined(tmp_path, "a", "b.tar") == str(tmp_path / "a" / "b.tar")
    assert remote.confined("s3://bucket/pre", "x/y.tar") == "s3://bucket/pre/x/y.tar"
    for root in (tmp_path, f"file://{tmp_path}", "s3://bucket/pre", "gs://bucket/pre", "http://h:1/p"):
        for part in ("../x", "a/../../x", "/etc/passwd", "..", ".", "", "a\\..\\x", "a\nb"):
            with pytest.raises(ConfinementError):
                remote.confined(root, part)
    (tmp_path / "link").symlink_to("/tmp")                               # a symlink out of the root
    with pytest.raises(ConfinementError):
        remote.confined(tmp_path, "link", "x")
    with pytest.raises(ConfinementError):                               # the prefix "pre" is not "prefix"
        remote.confined("s3://bucket/pre", "../prefix/x")


def test_the_cache_names_files_by_sha256_only(tmp_path):
    victim = tmp_path / "victim.tar"
    victim.write_bytes(b"mine")
    cache = ShardCache(tmp_path / "cache")
    for bad in ("../victim", str(tmp_path / "victim"), "A" * 64, "0" * 63, "0" * 64 + "/x"):
        for use in (lambda: cache.put(bad, b"theirs"), lambda: cache.drop(bad), lambda: cache.get(bad, 6)):
            with pytest.raises(ConfinementError):
                use()
    assert victim.read_bytes() == b"mine"
    cache.put("0" * 64, b"x")
    assert cache.get("0" * 64, 1) == b"x"


def test_a_served_sha256_cannot_write_outside_the_cache(served, tmp_path):
    """The severe defect: the cache file was named after the manifest's unchecked sha256."""
    folder, srv = served
    victim = tmp_path / "victim.tar"
    victim.write_bytes(b"mine")
    cache = tmp_path / "cache"
    rel = os.path.relpath(victim.with_suffix(""), cache)
    rewrite(folder / TRAIN / mf.MANIFEST_NAME, _set(["shards", 0, "sha256"], rel))
    res = cli(*train_args(srv.url, tmp_path / "run", "--epochs", "1", "--dev", "", "--shard-cache", cache), ok=False)
    assert_one_line_error(res, "shards[0].sha256", "64 lowercase hex")
    assert victim.read_bytes() == b"mine"
    assert not cache.exists() or not any(cache.iterdir())


def test_publish_never_writes_outside_its_target(published, tmp_path):
    src, _, _ = published
    target = tmp_path / "target"
    cli("publish", "--shards", src, "--to", target, "--quiet")
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    for field, value in ((["shards", 0, "name"], "../../evil.tar"), (["split"], "../evil")):
        bad = shutil.copytree(src, tmp_path / f"bad{len(field)}")
        rewrite(bad / TRAIN / mf.MANIFEST_NAME, _set(field, value))
        res = cli("publish", "--shards", bad, "--to", target, "--quiet", ok=False)
        assert_one_line_error(res, f"{bad / TRAIN / mf.MANIFEST_NAME}", repr(field[-1]) if field[-1] == "split"
                              else "shards[0].name")
        assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before   # old manifests kept
    assert not list(tmp_path.glob("evil*")) and not list(tmp_path.rglob("evil.tar"))
    for url in (str(target), f"file://{target}", "memory://bucket/prefix"):
        t = Target(url, FetchPolicy())
        for rel in ("../x", "a/../../x", "/abs"):
            with pytest.raises(ConfinementError):
                t.put(b"x", rel)
            with pytest.raises(ConfinementError):
                t.remove(rel)


def test_split_names_that_leave_the_folders_are_refused(fast, tmp_path):
    res = cli("shards", "--data", fast[0], "--shards", tmp_path / "s", "--train", f"../{TRAIN}", "--quiet", ok=False)
    assert_one_line_error(res, f"'../{TRAIN}' is not a split name")
    assert not (tmp_path / TRAIN).exists()


# ------------------------------------------------------------------ 3. downloads are bounded

def test_an_endless_body_is_cut_at_one_byte_over(served):
    folder, srv = served
    rel, n = first_shard(folder)
    srv.endless(rel)
    with pytest.raises(Oversized, match=rf"sent more than {n} bytes"):
        remote.read_bytes(f"{srv.url}/{rel}", FAST, size=n)
    assert srv.gets(rel) == 1                                            # not retried
    time.sleep(0.2)
    assert srv.sent[rel] < n + 16 * 2**20                                # what the sockets buffered, no more


def test_a_content_length_over_the_manifest_is_refused_before_the_body(served):
    folder, srv = served
    rel, n = first_shard(folder)
    srv.announce(rel, extra=2**30)
    with pytest.raises(Oversized, match=rf"announces {n + 2**30} bytes, the manifest says {n}"):
        remote.read_bytes(f"{srv.url}/{rel}", FAST, size=n)
    assert srv.gets(rel) == 1
    time.sleep(0.2)
    assert srv.sent[rel] < 16 * 2**20


def test_a_stalled_fetch_times_out_and_is_retried(served):
    folder, srv = served
    rel, n = first_shard(folder)
    srv.drip(rel, interval=0.02, times=1)                                # then the file as it is
    policy = FetchPolicy(retries=1, backoff=0.01, timeout=1.0, min_rate=2**20)   # deadline ~1.1 s
    counts: dict[str, int] = {}
    t0 = time.monotonic()
    data = remote.read_bytes(f"{srv.url}/{rel}", policy, lambda k, v: counts.__setitem__(k, counts.get(k, 0) + v),
                             size=n)
    assert data == (folder / rel).read_bytes() and counts["retries"] == 1 and time.monotonic() - t0 < 10
    srv.drip(rel, interval=0.02)
    with pytest.raises(FetchError, match=r"after 2 tries \(TimeoutError: stalled: \d+ of \d+ bytes"):
        remote.read_bytes(f"{srv.url}/{rel}", policy, size=n)


MEMORY_PROBE = """
import resource, sys
from pipeline import remote
try:
    remote.read_bytes(sys.argv[1], remote.FetchPolicy(retries=0), size=int(sys.argv[2]))
except remote.FetchError as exc:
    print(exc)
print("maxrss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_stays_bounded_against_an_endless_body(served):
    """A reader of a body that never ends keeps about one shard in memory (the old code buffered
    what the server sent: 23.5 GB until the kernel killed it)."""
    folder, srv = served
    rel, n = first_shard(folder)
    srv.endless(rel)
    base = subprocess.run([sys.executable, "-c", "import resource; from pipeline import remote; "
                           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, check=True)
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, f"{srv.url}/{rel}", str(n)], cwd=ROOT,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120, check=True).stdout
    assert f"sent more than {n} bytes" in out
    grown = int(out.split("maxrss_kb")[1]) - int(base.stdout)
    assert grown < 64 * 1024, f"{grown} kB more than the import alone"


# ---------------------------------------------------------------- 4. transient is not missing

def test_a_server_error_on_the_size_probe_is_retried_not_missing(served):
    folder, srv = served
    rel, n = first_shard(folder)
    m = mf.load(srv.url, TRAIN)
    srv.fail(rel, status=503, times=1, method="HEAD")
    from pipeline.reading import check_shards
    assert check_shards(m, policy=FAST) == []                            # retried: there
    srv.fail(rel, status=503, times=None, method="HEAD")
    [(s, why)] = check_shards(m, policy=FAST)
    assert s == 0 and "missing" not in why and "HTTP 503" in why and "after 2 tries" in why
    (folder / rel).unlink()
    srv2 = ShardServer(folder)
    with srv2:
        [(_, why)] = check_shards(mf.load(srv2.url, TRAIN), policy=FAST)
        assert why == "missing shard"                                    # a 404 is


def test_a_redirect_to_a_dead_port_is_transient_with_url_advice(served, tmp_path):
    folder, srv = served
    rel, n = first_shard(folder)
    srv.redirect(rel, f"http://127.0.0.1:{closed_port()}/{rel}")
    with pytest.raises(FetchError, match=r"after 2 tries \(URLError"):
        remote.read_bytes(f"{srv.url}/{rel}", FAST, size=n)
    assert srv.gets(rel) == 2
    res = cli(*train_args(srv.url, tmp_path / "run", "--epochs", "1", "--dev", "", *NET), ok=False)
    line = assert_one_line_error(res, f"{srv.url}/{rel}", "after 2 tries", "check the server and the URL")
    assert "rerun `phonerec shards`" not in line


# ------------------------------------------------------- 5. a stop signal during a stalled fetch

@pytest.mark.parametrize("workers,group", [(0, False), (2, True)])
def test_sigterm_during_a_stalled_fetch_checkpoints_and_exits_130(served, tmp_path, workers, group):
    folder, srv = served
    for s in json.loads((folder / TRAIN / mf.MANIFEST_NAME).read_text())["shards"]:
        srv.drip(f"{TRAIN}/{s['name']}", interval=1.0)                  # every shard: one byte a second
    run = tmp_path / "run"
    args = train_args(srv.url, run, "--epochs", "1", "--dev", "", "--workers", workers, "--fetch-min-rate", "1")
    proc = popen(args)
    try:
        deadline = time.monotonic() + 120
        # a GET: train's shard check HEADs every shard before its stop handler is in place
        while not any(m == "GET" and r.endswith(".tar") for m, r in srv.requests) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        (os.killpg if group else os.kill)(proc.pid, signal.SIGTERM)     # a terminal's Ctrl-C reaches the group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "while waiting for data" in err, err
    assert (run / "weights" / "last.pt").is_file()


# ------------------------------------------------------------------------------ 6. pinning

def test_a_pinned_digest_proves_what_was_published(published, served, tmp_path):
    _, _, digest = published
    folder, srv = served
    nodata = ("--data", tmp_path / "no-data")
    res = cli("shards", "--verify", "--shards", f"{srv.url}#sha256={digest}", *nodata)
    assert f"{TRAIN}: OK" in res.output
    res = cli("shards", "--verify", "--shards", srv.url, "--expect-digest", digest.upper(), *nodata)
    assert f"{TRAIN}: OK" in res.output
    m = mf.load(f"{srv.url}#sha256={digest}", TRAIN)
    assert m.pinned and m.url == f"{srv.url}/{TRAIN}"

    wrong = "0" * 64
    res = cli(*train_args(srv.url, tmp_path / "a", "--epochs", "1", "--expect-digest", wrong), ok=False)
    assert_one_line_error(res, f"{srv.url}/{mf.INDEX_NAME} has sha256 {digest}, not the expected {wrong}")
    res = cli(*train_args(srv.url, tmp_path / "b", "--epochs", "1", "--expect-digest", "abc"), ok=False)
    assert res.exit_code == 2 and "not a sha256" in res.output

    # The server replaces a shard and gives the manifest a matching size, crc32 and digest:
    # unpinned, that is indistinguishable from a rebuild; pinned, the manifest is refused.
    rel, n = first_shard(folder)
    tampered = bytearray((folder / rel).read_bytes())
    tampered[n // 2] ^= 0xFF
    (folder / rel).write_bytes(bytes(tampered))
    import zlib
    rewrite(folder / TRAIN / mf.MANIFEST_NAME, _set(["shards", 0, "crc32"], zlib.crc32(bytes(tampered))))
    assert mf.load(srv.url, TRAIN).shards[0].crc32 == zlib.crc32(bytes(tampered))
    with pytest.raises(mf.ManifestError, match="differs from what the pinned index lists"):
        mf.load(f"{srv.url}#sha256={digest}", TRAIN)
    # A pinned manifest's shards are checked by sha256, which a server cannot forge as it can a crc32.
    m = mf.load(f"{srv.url}#sha256={digest}", DEV)
    data = (folder / DEV / m.shards[0].name).read_bytes()
    assert m.shard_problem(0, data) is None
    m.shards[0].crc32 = zlib.crc32(b"other")        # a crc32 no longer consulted
    assert m.shard_problem(0, data) is None
    assert "sha256 differs" in m.shard_problem(0, data[:-1] + bytes([data[-1] ^ 1]))


# ------------------------------------------------------------------------ 7. numbers in range

BAD_NUMBERS = [
    ("train", "--epochs", "0"), ("train", "--epochs", "-1"), ("train", "--max-steps", "-1"),
    ("train", "--workers", "-1"), ("train", "--workers", "1000"), ("train", "--lr", "0"),
    ("train", "--max-frames", "0"), ("train", "--warmup", "2"), ("predict", "--beam-width", "100000"),
    ("evaluate", "--beam-width", "-1"), ("predict", "--workers", "1000"), ("transcribe", "--beam-width", "5000"),
    ("shards", "--workers", "0"), ("shards", "--workers", "1000"), ("train", "--fetch-min-rate", "0"),
]


@pytest.mark.parametrize("command,option,value", BAD_NUMBERS)
def test_numeric_options_have_ranges(tmp_path, command, option, value):
    (tmp_path / "x.npy").write_bytes(b"")
    extra = [str(tmp_path / "x.npy")] if command == "transcribe" else []
    res = cli(command, option, value, *extra, ok=False)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert option in res.output and ("Invalid value" in res.output or "above 0" in res.output), res.output


def test_a_recipe_out_of_range_is_one_line(fast, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 0\n")
    res = cli(*train_args(fast[1], tmp_path / "run", "--config", recipe), ok=False)
    assert_usage_error(res, "epochs (--epochs): 0 is below 1")      # exit status 2: refused before any work
    assert not (tmp_path / "run" / "weights" / "best.pt").exists()
