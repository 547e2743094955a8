"""The prepared GPU scripts run (on the CPU, in their dry-run modes), so a lent GPU's minutes are
not spent on a typo; the wheel-pieces script joins exactly what it split, and refuses a missing piece."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_gpu_paths_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_gpu_paths.py"), "--dry-run", "--cameras", "2",
                        "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO / "bench")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    variants = {row["variant"] for row in rows}
    assert {"torch eager FP32", "torch FP32 NHWC", "2 cameras"} <= variants
    eager = next(row for row in rows if row["variant"] == "torch eager FP32")
    assert eager["semantic_pct"] == 100.0 and eager["p50_ms"] > 0
    nhwc = next(row for row in rows if row["variant"] == "torch FP32 NHWC")
    assert nhwc["semantic_pct"] >= 99.9 and nhwc["max_abs_dscore"] < 1e-3


def test_wheel_pieces_round_trip(tmp_path: Path) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 123)
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    wheel.write_bytes(blob)
    env = {**os.environ, "PEBAL_PIECES": str(tmp_path / "store")}
    script = str(REPO / "bench" / "wheel_pieces.sh")
    run = lambda *a: subprocess.run(["bash", script, *a], capture_output=True, text=True, env=env, timeout=60)  # noqa: E731
    assert run("split", str(wheel), str(tmp_path / "parts"), "1").returncode == 0
    parts = sorted((tmp_path / "parts").glob("*.part??"))
    assert len(parts) == 4
    # one call per piece, as on the device: each stash adds what that call carried
    for part in parts:
        carried = tmp_path / f"call_{part.suffix}"
        carried.mkdir()
        (carried / part.name).write_bytes(part.read_bytes())
        (carried / (wheel.name + ".sha256")).write_text((tmp_path / "parts" / (wheel.name + ".sha256")).read_text())
        assert run("stash", str(carried)).returncode == 0
    r = run("join")
    assert r.returncode == 0, r.stderr
    joined = tmp_path / "store" / wheel.name
    assert hashlib.sha256(joined.read_bytes()).digest() == hashlib.sha256(blob).digest()
    (tmp_path / "store" / (parts[2].name)).unlink()
    r = run("join")
    assert r.returncode != 0 and "missing or corrupt" in r.stderr


@pytest.mark.slow
def test_bench_batch_dry_run_with_the_gpu_scripts_flags(tmp_path: Path) -> None:
    """bench_batch.py as gpu_check_fast.sh calls it (its flags, --dry-run added): both runtimes,
    both output sets, 1 and 2 cameras; the batched tick computes what the sequential one does."""
    text = (REPO / "bench" / "gpu_check_fast.sh").read_text()
    call = text[text.index("python3 bench_batch.py"):].split("--json")[0].replace("\\\n", " ").split()[2:]
    out = tmp_path / "batch.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_batch.py"), *call, "--dry-run", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=REPO / "bench")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert {(row["runtime"], row["outputs"], row["cameras"]) for row in rows} == {
        (rt, o, n) for rt in ("torch", "ort") for o in ("all", "status") for n in (1, 2)}
    for row in rows:
        assert row["batch_dim"] == (row["runtime"] == "torch")
        assert row["sequential_ms"] > 0 and row["batched_ms"] > 0
        assert row["semantic_pct"] == 100.0 if row["runtime"] == "ort" else row["semantic_pct"] >= 99.9
        if row["runtime"] == "ort":
            assert row["max_abs_dscore"] == 0.0
