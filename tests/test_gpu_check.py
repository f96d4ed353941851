"""`make gpu-check` (bench/gpu_check.py) on a machine without CUDA: one line and exit 2, before any
work; its report renders every part (the figures themselves come from a GPU machine)."""

from __future__ import annotations

import subprocess
import sys

import torch

from bench import gpu_check
from tests.conftest import ROOT


def test_without_cuda_the_check_is_one_line_and_exit_2(tmp_path):
    if torch.cuda.is_available():
        return                                              # the GPU machine runs the real check
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().count("\n") == 0 and "needs a CUDA device" in out.stderr
    assert not list(tmp_path.iterdir())


def test_the_report_shows_every_part():
    res = {"device": "Some GPU", "cpu": "Some CPU (avx2)", "torch": "2.x", "date": "2030-01-01 00:00",
           "tests": {"returncode": 0, "passed": 16},
           "decoding": [{"family": "peaked", "batch": 64, "beam_width": 10, "lm": True, "cuda_utt_per_s": 900.0,
                         "cpu_utt_per_s": 300.0, "cpu_threads": 16, "cuda_over_cpu": 3.0,
                         "greedy_cuda_utt_per_s": 9000.0}],
           "training": [{"preset": "large", "frames_per_s": 123456, "data_wait_fraction": 0.012}],
           "demo": {"recipe": "configs/demo-gpu.yaml", "epochs": 3, "dev_per": 0.25, "frames_per_s": 99999,
                    "minutes": 2.5, "submission_rows": 100}}
    md = gpu_check.markdown(res)
    assert "16 passed, 0 failed" in md and "| peaked | 64 | 10 | yes | 900.0 | 300.0 (16) | 3.0 | 9000.0 |" in md
    assert "| large | yes | 123456 | 1.2% |" in md and "dev PER 25.0 %" in md and "100 submission rows" in md


def test_torch_is_declared_and_the_gpu_machine_keeps_its_own():
    """pyproject.toml requires torch (a bare `pip install` of the project works at import); what
    `make gpu-check` installs beside a GPU machine's CUDA build leaves it out, and every other
    requirement is there."""
    import tomllib
    from bench.requirements import PYPROJECT, requirements
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").startswith("torch>=") for d in deps), deps
    reqs = requirements(["test", "bench"])
    assert not [r for r in reqs if r.lower().startswith("torch")], reqs
    assert {"numpy>=1.26", "pytest>=8", "fast-ctc-decode>=0.3.7"} <= set(reqs) and "tensorboard>=2.18" in reqs
