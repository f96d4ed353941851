"""Shards in S3, against a real S3 server: moto's standalone server (`moto[server]`) started on
127.0.0.1 by this module and stopped by it, reached through s3fs with an endpoint URL
(AWS_ENDPOINT_URL, as for MinIO, Ceph or R2; README: Shards at a URL).

publish -> train -> predict over s3:// give what the same commands give from the local folder;
then the faults an S3 server can produce: a missing object (404), an object replaced by a larger
one, a hostile manifest with a valid digest, a key outside the published prefix, a pinned digest.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from pipeline import manifest as mf  # noqa: E402
from pipeline.publish import Target  # noqa: E402
from pipeline import remote  # noqa: E402
from pipeline.remote import ConfinementError, FetchPolicy, Oversized  # noqa: E402
from tests.helpers import (DEV, TEST, TRAIN, assert_one_line_error, assert_same_run, cli, decode_args,  # noqa: E402
                           train_args)

pytestmark = pytest.mark.usefixtures("one_thread")

BUCKET = "phonerec-test"
ONE_EPOCH = ("--epochs", "1", "--dev", DEV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The endpoint URL of a moto S3 server on 127.0.0.1 with an empty bucket; the AWS variables
    point s3fs at it for the module's tests."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": endpoint}.items():
        mp.setenv(k, v)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        import fsspec
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir(BUCKET)
        yield endpoint
    finally:
        mp.undo()
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def s3fs_now():
    import fsspec
    return fsspec.filesystem("s3", skip_instance_cache=True)


@pytest.fixture(scope="module")
def published(s3, pipe, fast, tmp_path_factory) -> tuple[str, str]:
    """(s3:// URL of the fast shards published there, the index digest publish printed)."""
    src = pipe.copy_tree(fast[1], tmp_path_factory.mktemp("s3_src") / "shards")
    url = f"s3://{BUCKET}/runs/shards"
    res = cli("publish", "--shards", src, "--to", url, "--quiet")
    [digest] = re.findall(r"^index digest: sha256 ([0-9a-f]{64})$", res.output, re.M)
    return url, digest


def test_publish_train_predict_over_s3_equal_local(published, fast, tmp_path):
    url, digest = published
    fs = s3fs_now()
    keys = {k.split("/runs/shards/")[1] for k in fs.find(f"{BUCKET}/runs/shards")}
    assert {"index.json", f"{TRAIN}/manifest.json", f"{DEV}/manifest.json", f"{TEST}/manifest.json"} <= keys
    assert not any(k.startswith("store") for k in keys)
    assert mf.available_splits(url) == sorted([TRAIN, DEV, TEST])

    local, remote = tmp_path / "local", tmp_path / "s3"
    cli(*train_args(fast[1], local, *ONE_EPOCH))
    res = cli(*train_args(f"{url}#sha256={digest}", remote, *ONE_EPOCH))
    assert "shards over the network" in res.output
    assert_same_run(local, remote, dev=True)

    for where, run in ((fast[1], local), (url, remote)):
        cli(*decode_args("predict", where, run / "weights", run / "results"))
    assert (remote / "results" / "submission.csv").read_text() == (local / "results" / "submission.csv").read_text()
    res = cli("shards", "--verify", "--shards", url, "--data", tmp_path / "none", "--expect-digest", digest)
    assert f"{TRAIN}: OK" in res.output


def test_s3_faults(published, pipe, fast, tmp_path):
    url, digest = published
    # A copy under another prefix, made hostile one object at a time.
    fs = s3fs_now()
    base = f"{BUCKET}/faults"
    fs.copy(f"{BUCKET}/runs/shards", base, recursive=True)
    copy = f"s3://{base}"
    m = mf.load(copy, TRAIN)
    shard = f"{base}/{TRAIN}/{m.shards[0].name}"

    data = fs.cat_file(shard)
    fs.pipe_file(shard, data + b"\0" * 4096)          # larger than the manifest says: refused before the body
    with pytest.raises(Oversized, match=rf"announces {len(data) + 4096} bytes, the manifest says {len(data)}"):
        remote.read_bytes(f"s3://{shard}", FetchPolicy(retries=0), size=m.shards[0].bytes)
    res = cli(*train_args(copy, tmp_path / "a", "--epochs", "1", "--dev", "", "--fetch-backoff", "0.01"), ok=False)
    assert_one_line_error(res, f"{TRAIN}/{m.shards[0].name}", "the manifest says", "publish them again")

    fs.rm_file(shard)                                 # a 404 is a missing shard, with the URL advice
    res = cli(*train_args(copy, tmp_path / "b", "--epochs", "1", "--dev", "", "--fetch-backoff", "0.01"), ok=False)
    line = assert_one_line_error(res, f"{TRAIN}/{m.shards[0].name}: missing shard", "publish them again")
    assert "rerun `phonerec shards`" not in line
    fs.pipe_file(shard, data)

    raw = json.loads(fs.cat_file(f"{base}/{TRAIN}/manifest.json"))
    raw["shards"][0]["sha256"] = "../../../victim"
    raw.pop("digest")
    raw["digest"] = mf._digest(raw)
    fs.pipe_file(f"{base}/{TRAIN}/manifest.json", json.dumps(raw).encode())
    with pytest.raises(mf.ManifestError, match=r"field 'shards\[0\]\.sha256' is not 64 lowercase hex"):
        mf.load(copy, TRAIN)
    with pytest.raises(mf.ManifestError, match="differs from what the pinned index lists"):
        mf.load(f"{copy}#sha256={digest}", TRAIN)    # the index was copied too: the pin catches the swap

    target = Target(f"s3://{BUCKET}/prefix", FetchPolicy())
    for rel in ("../escaped", "a/../../escaped"):
        with pytest.raises(ConfinementError):
            target.put(b"x", rel)
    assert not fs.exists(f"{BUCKET}/escaped")
