"""The GPU path (marker `gpu`; skipped without CUDA, so CPU-only CI runs none of it): the search on
CUDA equals the search on the CPU, training steps of the GPU presets with and without --amp, and
`predict` on a GPU writes the submission the CPU writes. `make gpu-check` (bench/gpu_check.py) runs
these first on a GPU machine, then measures."""

from __future__ import annotations

import shutil

import pytest
import torch

from bench.bench_decode import FAMILIES
from decoding import CTCBeamDecoder, default_labels, greedy_decode
from decoding.lm import dense, estimate
from tests.helpers import cli

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")]

CLASSES = 43
# float32 sums in another order on another device: the scores may differ in their last bits
SCORE_TOL = dict(rtol=1e-5, atol=1e-3)


def _lm():
    labels = default_labels(CLASSES)
    lp = FAMILIES["peaked"](16, 200, CLASSES, seed=7)
    strings = [[labels[c] for c in h] for h in greedy_decode(lp, torch.full((16,), 200))]
    return dense(estimate(strings, 3, labels[1:]), labels), labels


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("with_lm", [False, True])
@pytest.mark.parametrize("blank_skip", [0.999, 2.0])
def test_the_search_on_cuda_equals_the_search_on_the_cpu(family, with_lm, blank_skip):
    lp = FAMILIES[family](24, 300, CLASSES, seed=3)
    lens = torch.randint(100, 301, (24,), generator=torch.Generator().manual_seed(4))
    lm, labels = _lm() if with_lm else (None, None)
    dec = CTCBeamDecoder(labels=labels, beam_width=10, cutoff_top_n=CLASSES, log_probs_input=True, num_processes=1,
                         blank_skip=blank_skip, lm=lm, alpha=0.5 if lm else 0.0, beta=1.0 if lm else 0.0)
    cpu, gpu = dec.search(lp, lens), dec.search(lp.cuda(), lens.cuda())
    assert torch.equal(cpu.tokens, gpu.tokens.cpu()) and torch.equal(cpu.lengths, gpu.lengths.cpu())
    assert torch.equal(cpu.frames, gpu.frames.cpu())
    assert torch.allclose(cpu.acoustic, gpu.acoustic.cpu(), **SCORE_TOL)
    assert torch.allclose(cpu.total, gpu.total.cpu(), **SCORE_TOL)
    assert dec.best(lp, lens) == dec.best(lp.cuda(), lens.cuda())      # the exact re-ranking too


@pytest.mark.parametrize("preset", ["large", "f22-best", "s24-pblstm"])
@pytest.mark.parametrize("amp", ["--amp", "--no-amp"])
def test_gpu_presets_train_a_few_steps(tiny_shards, tmp_path, preset, amp):
    w = tmp_path / "w"
    cli("train", "--shards", tiny_shards, "--weights", w, "--results", w / "r", "--epochs", "1", "--preset", preset,
        "--device", "cuda", amp, "--workers", "0", "--max-steps", "3", "--no-tune-decoding", "--quiet")
    assert (w / "best.pt").is_file()


@pytest.mark.parametrize("search_device", ["cpu", "cuda"])
def test_predict_on_the_gpu_writes_the_cpu_submission(tiny_shards, trained, tmp_path, search_device):
    weights = tmp_path / "w"
    shutil.copytree(trained, weights)
    out = {}
    for device in ("cpu", "cuda"):
        res = tmp_path / device
        cli("predict", "--shards", tiny_shards, "--weights", weights, "--results", res, "--device", device,
            "--search-device", search_device if device == "cuda" else "cpu", "--workers", "0", "--quiet")
        out[device] = (res / "submission.csv").read_text()
    assert out["cpu"] == out["cuda"]
