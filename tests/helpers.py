"""Helpers shared by the stage-2 tests (training runs, the command line, torchrun, checkpoints).

Plain functions, imported as `from tests.helpers import ...` (conftest.py puts the repository
root on sys.path); conftest.py's fixtures call some of them.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from corpora.random import utterance
from phonerec.cli import main as cli_main
from pipeline.vocab import VOCAB
from tests.conftest import DEV, TEST, TRAIN
from training.checkpoint import Checkpoint

__all__ = ["DEV", "TEST", "TRAIN"]          # re-exported: the tests' split names

ROOT = Path(__file__).resolve().parents[1]
MAX_FRAMES = 1600                 # the tests' batch budget: a few short utterances per batch
FAST_COUNTS = {TRAIN: 48, DEV: 8, TEST: 6}      # the `fast` corpus (conftest.py)
TORCHRUN_TIMEOUT = 240


# ------------------------------------------------------------------------------------ corpora

def write_corpus(pipe, data: Path, counts: dict[str, int], *, seed: int = 7, lengths=(60, 300),
                 bad_splits=(), short: list[str] | tuple = (), short_labels=()) -> None:
    """Short learnable utterances (corpora.random.utterance) in the raw layout; the test split
    unlabelled. The transcripts of `bad_splits` get an unknown symbol (every file rejected); a
    split counted 0 gets an empty mfcc/ folder (0 inputs); each id in `short` is a 10-frame
    training utterance labelled `short_labels`."""
    for k, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, k])
        (data / split / "mfcc").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            x, labels = utterance(seed, k, i, int(rng.integers(*lengths)))
            if split in bad_splits:
                labels = labels[:2] + ["QQ"] + labels[2:]
            pipe.write_utterance(data, split, f"{100 + k}-{2000 + k}-{i:04d}", x, labels if split != TEST else None)
    rng = np.random.default_rng(99)
    for uid in short:
        pipe.write_utterance(data, TRAIN, uid, pipe.random_feats(rng, 10), ["[SOS]", *short_labels, "[EOS]"])


def built_shards(pipe, root: Path, counts: dict[str, int], *, min_shards: int, **corpus) -> Path:
    """write_corpus(pipe, root/data, counts, **corpus) built into root/shards (returned)."""
    write_corpus(pipe, root / "data", counts, **corpus)
    pipe.build(root / "data", root / "shards", min_shards=min_shards)
    return root / "shards"


def flip_feature_byte(m, s: int) -> Path:
    """Flip one bit inside the feature data of shard s's first utterance (m: its Manifest): the
    tar and the .npy still parse (this used to be silent corruption)."""
    path = m.shard_paths()[s]
    data = bytearray(path.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        first = next(ti for ti in tar if ti.name.endswith(".feats.npy"))
        offset = first.offset_data + 128 + 10          # past the 128-byte .npy header
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def make_weights(shards: Path, path: Path) -> Path:
    """An untrained model1 checkpoint with the shards' statistics (enough to decode)."""
    from pipeline import manifest as mf
    from training.model import Model, preset_config
    model = Model(preset_config("model1"))
    Checkpoint(model=model.state_dict(), model_config=model.config.to_dict(), vocab=list(VOCAB),
               stats=mf.load(shards, TRAIN).stats.to_json()).save(path)
    return path


# ------------------------------------------------------------------------- the command line

def cli(*args, ok: bool = True) -> Result:
    """`phonerec ARGS` in this process (exceptions other than click's propagate)."""
    res = CliRunner().invoke(cli_main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def assert_one_line_error(res: Result, *words, exit_code: int = 1) -> str:
    """A failed command: exit status 1 (the work failed; 2: a usage error), no traceback, one
    `Error:` line holding all `words`."""
    assert res.exit_code == exit_code, (res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.output
    for w in words:
        assert str(w) in errors[0], f"{w!r} not in {errors[0]!r}"
    return errors[0]


def assert_usage_error(res: Result, *words) -> str:
    """An option or recipe value refused before any work: exit status 2, one `Error:` line."""
    return assert_one_line_error(res, *words, exit_code=2)


def train_args(shards, run: Path, *extra, preset: str = "model1", max_frames: int = MAX_FRAMES,
               lr: float | None = None, tune: bool = False) -> list:
    """`phonerec train` on `shards` into run/weights and run/results: model1, in-process loading;
    without the choice of the decoding after training (tests/test_decoding_choice.py tests it)
    unless `tune`."""
    return ["train", "--shards", shards, "--weights", run / "weights", "--results", run / "results",
            "--preset", preset, "--workers", "0", "--max-frames", max_frames, "--quiet",
            *(["--lr", lr] if lr is not None else []), *([] if tune else ["--no-tune-decoding"]), *extra]


def decode_args(command: str, shards, weights, results, *extra) -> list:
    """`phonerec predict|evaluate` with greedy decoding and in-process loading."""
    return [command, "--shards", shards, "--weights", weights, "--results", results, "--beam-width", "0",
            "--workers", "0", "--quiet", *extra]


# ---------------------------------------------------------------------- training in-process

def train_config(shards, run: Path, *, preset: str = "model1", max_frames: int = MAX_FRAMES, workers: int = 0,
                 **options):
    """The TrainConfig that `train_args(shards, run, ...)` gives on the command line."""
    from training.config import TrainConfig
    options.setdefault("tune_decoding", False)
    return TrainConfig(shards=str(shards), weights=str(run / "weights"), results=str(run / "results"),
                       preset=preset, workers=workers, max_frames=max_frames, progress=False, **options)


def train_and_stop(cfg, after: int) -> str:
    """train(cfg) in this process, asked to stop (as Ctrl-C does: checkpoint at that step) once
    `after` steps of this run are done; returns its log."""
    from training.train import train
    lines: list[str] = []
    done = itertools.count(1)
    outcome = train(cfg, log=lines.append, on_step=lambda state: next(done) >= after)
    assert outcome.get("stopped") and not outcome.get("signal"), outcome
    return "\n".join(lines)


# ---------------------------------------------------------------------------- run results

def metrics(run: Path) -> list[dict]:
    p = run / "results" / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def load_last(run: Path, name: str = "last.pt") -> Checkpoint:
    return Checkpoint.load(run / "weights" / name)


def assert_same_run(a: Path, b: Path, dev: bool = False) -> None:
    """Two runs ended bit-identical: position, weights, optimizer and scheduler; the same metrics
    (losses to 1e-12: the sums are identical, summed in the same order)."""
    sa, sb = load_last(a), load_last(b)
    assert (sa.epoch, sa.step, sa.global_step) == (sb.epoch, sb.step, sb.global_step)
    assert sa.rank_steps == sb.rank_steps
    assert sa.model.keys() == sb.model.keys()
    for k in sa.model:
        assert torch.equal(sa.model[k], sb.model[k]), f"model {k} differs"
    assert sa.optimizer["param_groups"] == sb.optimizer["param_groups"]
    assert sa.optimizer["state"].keys() == sb.optimizer["state"].keys()
    for k, st in sa.optimizer["state"].items():
        for name, t in st.items():
            assert torch.equal(t, sb.optimizer["state"][k][name]), f"optimizer state {k}.{name} differs"
    assert sa.scheduler == sb.scheduler
    # The weight average is training state too (on by default, so this is not vacuous).
    assert bool(sa.average) and sa.average.keys() == sb.average.keys()
    assert sa.average["updates"] == sb.average["updates"] == sa.global_step
    for k in sa.average["model"]:
        assert torch.equal(sa.average["model"][k], sb.average["model"][k]), f"averaged weights {k} differ"
    for ra, rb in zip(metrics(a), metrics(b), strict=True):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-12)
        if dev:
            assert rb["dev_loss"] == pytest.approx(ra["dev_loss"], rel=1e-12)
        assert rb["utterances"] == ra["utterances"] and rb["padding_efficiency"] == ra["padding_efficiency"]


def temp_leftovers(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if ".tmp" in p.name or p.name.endswith((".old", ".partial"))]


# ---------------------------------------------------------------------------- subprocesses

def subprocess_env(**extra) -> dict:
    """One thread per process (two ranks on a 2-core machine would otherwise oversubscribe it)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def popen(args, **extra_env) -> subprocess.Popen:
    """`phonerec ARGS` in its own process group (so a kill can take its worker processes too)."""
    return subprocess.Popen([sys.executable, "-m", "phonerec", *map(str, args)], cwd=ROOT,
                            env=subprocess_env(**extra_env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> bool:
    """SIGKILL the process and its workers; True if it was still running."""
    running = proc.poll() is None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()
    return running


def torchrun_popen(args, *, nproc: int = 2, restarts: int = 0, **env) -> subprocess.Popen:
    """`torchrun --standalone -m phonerec ARGS` in its own session."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           f"--max-restarts={restarts}", "--monitor-interval=0.2", "-m", "phonerec", *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(**env), cwd=ROOT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = TORCHRUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Wait for a torchrun job; one that hangs is stopped (never left behind) and fails the test."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGTERM first: torchrun then stops its ranks (they run in sessions of their own), so no hung
        # rank is left behind; SIGKILL if that does not work either.
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            kill_group(proc)
        pytest.fail(f"torchrun did not finish in {timeout} s (a rank hung?)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def torchrun(args, *, nproc: int = 2, restarts: int = 0, ok: bool = True, **env) -> subprocess.CompletedProcess:
    """A torchrun job to its end; with `ok` it must succeed."""
    res = finish(torchrun_popen(args, nproc=nproc, restarts=restarts, **env))
    if ok:
        assert res.returncode == 0, f"torchrun exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return res


def rank_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the torchrun worker processes below `parent` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: dict[int, int] = {}
    todo = [parent]
    while todo:                         # breadth first: a rank before any process it started
        pid = todo.pop(0)
        todo.extend(children.get(pid, []))
        try:
            env = dict(v.split("=", 1) for v in (Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                                                 .split("\0")) if "=" in v)
        except OSError:
            continue
        if "RANK" in env and "LOCAL_RANK" in env and pid != parent:
            found.setdefault(int(env["RANK"]), pid)
    return found


def wait_for_checkpoint(weights: Path, proc: subprocess.Popen, reached: int, timeout: float = 120) -> Checkpoint:
    """Poll weights/last.pt; each time it is replaced, read it (Checkpoint.load) and return it once its
    global_step is at least `reached` (a run with --checkpoint-every N writes it every N steps)."""
    path = Path(weights) / "last.pt"
    seen = None
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the run ended before a checkpoint at step {reached}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no checkpoint at step {reached} within {timeout} s"
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        if st is not None and (st.st_ino, st.st_mtime_ns) != seen:
            seen = (st.st_ino, st.st_mtime_ns)
            ck = Checkpoint.load(path)
            if ck.global_step >= reached:
                return ck
        time.sleep(0.005)


# ---------------------------------------------------------------------------------- the model

def intermediate_shapes(model, x: torch.Tensor, lengths: torch.Tensor) -> dict:
    """Shapes inside model(x, lengths) (no grad), collected with forward hooks: embeddings (each
    conv block's output as [B, T_i, C_i]), packed (the LSTM input's real frames, [sum T', C]),
    lstm_packed (the LSTM output's real frames, [sum T', 2H]), unpacked (the LSTM output
    [B, T', 2H]), linear (each classifier Linear's output); and the model's two outputs."""
    from torch.nn.utils.rnn import pack_padded_sequence
    seen: dict = {"embeddings": [], "linear": []}

    def embedding(module, inputs, output) -> None:        # a hook returning a value would replace the output
        seen["embeddings"].append(output.transpose(1, 2))

    def classifier_input(module, inputs, output) -> None:
        seen["unpacked"] = inputs[0]

    def linear(module, inputs, output) -> None:
        seen["linear"].append(output)
    hooks = [b.register_forward_hook(embedding) for b in model.conv]
    hooks.append(model.linears[0].register_forward_hook(classifier_input))
    hooks += [lin.register_forward_hook(linear) for lin in model.linears]
    try:
        with torch.no_grad():
            log_probs, out_lengths = model(x, lengths)
    finally:
        for h in hooks:
            h.remove()
    lstm_in = seen["embeddings"][-1] if seen["embeddings"] else x

    def packed(t: torch.Tensor) -> tuple:
        return tuple(pack_padded_sequence(t, out_lengths.cpu(), batch_first=True, enforce_sorted=False).data.shape)
    return {"embeddings": [tuple(e.shape) for e in seen["embeddings"]], "packed": packed(lstm_in),
            "lstm_packed": packed(seen["unpacked"]), "unpacked": tuple(seen["unpacked"].shape),
            "linear": [tuple(t.shape) for t in seen["linear"]], "log_probs": log_probs, "out_lengths": out_lengths}
