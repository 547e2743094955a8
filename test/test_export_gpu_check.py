"""bench/gpu_check.sh's CPU-side logic: it must skip cleanly where there is no CUDA, write its
figures to $OUT, and its parity helpers must compute what they claim."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pebal_ros.runtime.base import FrameOutputs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run the full check")
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no CUDA device: GPU checks skipped" in r.stdout
    text = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert "== 1. environment" in text and "0 section(s) failed" in text


def test_parity_helpers():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    a = FrameOutputs(np.zeros((4, 5), np.uint8), np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8))
    b = FrameOutputs(a.semantic.copy(), a.score.copy(), a.mask.copy())
    b.semantic[0, 0] = 3
    b.score[1, 1] = -0.25
    b.mask[:2] = 1
    p = gpu_check.compare(a, b, 0.0)
    assert p["score_max_abs_diff"] == pytest.approx(0.25)
    assert p["semantic_agreement"] == pytest.approx(19 / 20)
    assert p["mask_agreement"] == pytest.approx(0.5)
    img = gpu_check.test_image(32, 48)
    assert img.dtype == np.uint8 and img.shape == (32, 48, 3) and img.std() > 10
