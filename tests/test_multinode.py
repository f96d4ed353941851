"""Several machines without a shared disk, on one machine: two torchrun launchers (--nnodes=2, one
rank each, c10d rendezvous on 127.0.0.1) reading the shards over HTTP from a real server the test
starts, each node with its own weights and results folders.

The job must end bit-identical to a single-node 2-rank run from local disk with the same seed,
only rank 0 (on node 0) may write, and a node whose process is killed is restarted by torchrun
(--max-restarts) and the job resumes from rank 0's checkpoint to the same result.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import (ROOT, assert_same_run, cli, decode_args, finish, kill_group, load_last, metrics,
                           rank_pids, subprocess_env, torchrun, train_args, wait_for_checkpoint)

pytestmark = pytest.mark.slow
DDP_FRAMES = 800
EPOCHS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_popen(args, *, node: int, port: int, run_id: str, restarts: int = 0) -> subprocess.Popen:
    """One node's torchrun launcher: 2 nodes, one process each, c10d rendezvous on 127.0.0.1.
    c10d numbers the nodes itself, in the order of their addresses (--node-rank is for the static
    backend): node 0 says it is 127.0.0.1, node 1 127.0.0.2 (both loopback), so node 0 hosts rank 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
           f"--node-rank={node}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}",
           f"--local-addr=127.0.0.{node + 1}", f"--max-restarts={restarts}", "--monitor-interval=0.2",
           "-m", "phonerec", *map(str, args)]
    # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: see test_reliability_kill (a restarted gloo group reading the
    # previous attempt's addresses, pytorch/pytorch#135712).
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=subprocess_env(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1"), start_new_session=True)


def two_nodes(url: str, root: Path, *extra, restarts: int = 0) -> list[subprocess.Popen]:
    """`phonerec train` on two nodes, each writing (if at all) under root/node<N>."""
    return launch([train_args(url, root / f"node{n}", "--epochs", EPOCHS, "--dev", "", *extra, max_frames=DDP_FRAMES)
                   for n in (0, 1)], restarts=restarts)


def launch(per_node: list[list], restarts: int = 0) -> list[subprocess.Popen]:
    port, run_id = free_port(), uuid.uuid4().hex[:8]
    return [node_popen(args, node=n, port=port, run_id=run_id, restarts=restarts) for n, args in enumerate(per_node)]


def finish_all(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    try:
        return [finish(p) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                kill_group(p)


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def reference(fast, tmp_path_factory):
    """The single-node 2-rank run from local disk (same seed and options)."""
    run = tmp_path_factory.mktemp("single_node")
    torchrun(train_args(fast[1], run, "--epochs", EPOCHS, "--dev", "", max_frames=DDP_FRAMES))
    return run


def test_two_nodes_over_http_equal_one_node_from_disk(served, reference, tmp_path):
    results = finish_all(two_nodes(served.url, tmp_path))
    for n, res in enumerate(results):
        assert res.returncode == 0, f"node {n} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    assert_same_run(reference, node0)                       # bit for bit: weights, optimizer, metrics
    assert load_last(node0).world == 2
    assert files_under(node1) == [], "only rank 0 (node 0) writes checkpoints and results"
    assert {"weights/last.pt", "weights/best.pt", "results/metrics.jsonl"} <= set(files_under(node0))
    rows = metrics(node0)
    assert all(r["network"]["fetched"] > 0 and r["network"]["retries"] == 0 for r in rows), rows
    assert "shards over the network" in results[0].stderr
    assert served.gets("train-clean-100/manifest.json") >= 2           # each node read it
    assert served.gets(f"train-clean-100/{load_shard_name(node0)}") >= 1


def load_shard_name(run: Path) -> str:
    import json
    raw = json.loads((run / "weights" / "config.json").read_text())
    assert raw["train"]["shards"].startswith("http://127.0.0.1:")
    from pipeline import manifest as mf
    return mf.load(raw["train"]["shards"], "train-clean-100").shards[0].name


def test_a_killed_node_restarts_and_the_job_resumes_to_the_same_result(served, reference, tmp_path):
    procs = two_nodes(served.url, tmp_path, "--checkpoint-every", "2", "--resume", restarts=1)
    try:
        seen = wait_for_checkpoint(tmp_path / "node0" / "weights", procs[0], reached=2)
        victim = rank_pids(procs[1].pid)[1]                  # node 1's process (global rank 1)
        os.kill(victim, signal.SIGKILL)
    except BaseException:
        for p in procs:
            kill_group(p)
        raise
    results = finish_all(procs)
    for n, res in enumerate(results):
        assert res.returncode == 0, f"node {n} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    resumed = re.findall(r"resumed at epoch (\d+), step (\d+) \(global step (\d+)\)", results[0].stderr)
    assert len(resumed) == 1, results[0].stderr              # one restart, from rank 0's checkpoint
    assert int(resumed[0][2]) >= seen.global_step
    node0 = tmp_path / "node0"
    assert_same_run(reference, node0)
    assert files_under(tmp_path / "node1") == []              # the restarted node read no checkpoint of its own


def test_two_nodes_predict_over_http_without_the_checkpoint_on_node_1(served, reference, fast, tmp_path):
    """Node 1 has no weights folder: rank 0 reads best.pt and sends it; the submission (written by
    rank 0 only) equals a single process's from local disk."""
    cli(*decode_args("predict", fast[1], reference / "weights", tmp_path / "alone"))
    results = finish_all(launch([decode_args("predict", served.url, reference / "weights" if n == 0 else
                                             tmp_path / "node1" / "weights", tmp_path / f"node{n}" / "results")
                                 for n in (0, 1)]))
    for n, res in enumerate(results):
        assert res.returncode == 0, f"node {n} exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    alone = (tmp_path / "alone" / "submission.csv").read_text()
    assert (tmp_path / "node0" / "results" / "submission.csv").read_text() == alone
    assert files_under(tmp_path / "node1") == []
