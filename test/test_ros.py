"""Runs the real ROS 2 tests in test/ros/ (launch_testing, rclpy, cv_bridge, rosbag2) from the plain
``python3 -m pytest -q test``, sourced ROS or not: see test/ros_env.py for how the environment is
found or built. Each file runs in its own subprocess (launch_testing owns the process, and ROS must
be on PYTHONPATH before Python starts) with its own ROS_DOMAIN_ID, and fails here with its output.

The files are named ros_*.py so a run without ROS never imports them; to run one by hand in a
sourced workspace: ``python3 -m pytest -q test/ros/ros_launch_detector.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ros_env import RosEnv, RosUnavailable, find_ros_env, rviz_unavailable

HERE = Path(__file__).resolve().parent
ROS_TESTS = sorted(p.name for p in (HERE / "ros").glob("ros_*.py"))
FIRST_DOMAIN = int(os.environ.get("ROS_DOMAIN_ID", "42"))
TIMEOUT_S = 900   # per file; the slowest take minutes on a loaded 2-core machine

pytestmark = pytest.mark.ros


@pytest.fixture(scope="session")
def ros_env() -> RosEnv:
    try:
        return find_ros_env()
    except RosUnavailable as exc:
        if exc.must_fail:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.parametrize("name", ROS_TESTS)
def test_ros(ros_env: RosEnv, name: str) -> None:
    if name == "ros_rviz.py" and (why := rviz_unavailable(ros_env)) is not None:
        if why.must_fail:
            pytest.fail(str(why), pytrace=False)
        pytest.skip(str(why))
    domain = (FIRST_DOMAIN + ROS_TESTS.index(name)) % 102
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=-ra",
           str(HERE / "ros" / name)]
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, env=ros_env.for_test(domain), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-8000:]
        pytest.fail(f"{name} ran past {TIMEOUT_S} s (ROS from {ros_env.how}):\n"
                    f"{out.decode(errors='replace') if isinstance(out, bytes) else out}", pytrace=False)
    finally:   # a `ros2` CLI call in the test may have started a daemon for this domain
        subprocess.run(["ros2", "daemon", "stop"], env=ros_env.for_test(domain), capture_output=True, timeout=60)
    tail = (proc.stdout + proc.stderr)[-12000:]
    if proc.returncode != 0:
        pytest.fail(f"{name} failed (exit {proc.returncode}, ROS from {ros_env.how}, domain {domain}):\n{tail}",
                    pytrace=False)
    # A ROS test that skipped everything passed nothing: the environment here is supposed to be complete.
    lines = proc.stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    assert "passed" in last and "skipped" not in last, f"{name}: nothing ran for real:\n{tail}"


def test_without_ros_fails_with_install_commands_or_skips(monkeypatch, tmp_path):
    """The harness's choice where ROS is missing (checked without ROS, in-process)."""
    import ros_env

    monkeypatch.delenv("AMENT_PREFIX_PATH", raising=False)
    monkeypatch.setenv("PEBAL_ROS_ROOT", str(tmp_path / "no_ros"))
    shared = tmp_path / "shared_ros2"
    shared.mkdir()
    monkeypatch.setattr(ros_env, "SHARED_ROS", shared)
    with pytest.raises(RosUnavailable) as exc:
        find_ros_env()
    assert exc.value.must_fail and f"tar -C / --zstd -xf {shared}/ros2-jazzy" in str(exc.value)
    assert sys.executable in str(exc.value)   # pip into the interpreter that runs the tests
    shared.rmdir()
    with pytest.raises(RosUnavailable) as exc:
        find_ros_env()
    assert not exc.value.must_fail and "no ROS 2 install" in str(exc.value)


def test_rviz_test_fails_with_install_commands_where_the_overlay_exists(monkeypatch, tmp_path):
    """The RViz test's precondition (checked without ROS): rviz2 in the ament index, Xvfb, xwininfo and
    ImageMagick's import; a failure with the commands where ../shared/ros2 has the overlay, else a skip."""
    import ros_env

    shared = tmp_path / "shared_ros2"
    shared.mkdir()
    monkeypatch.setattr(ros_env, "SHARED_ROS", shared)
    prefix = tmp_path / "opt_ros"
    tools = tmp_path / "bin"
    tools.mkdir()
    env = RosEnv({"AMENT_PREFIX_PATH": str(prefix), "PATH": str(tools)}, "test", "jazzy")
    why = rviz_unavailable(env)
    assert why is not None and not why.must_fail and "rviz2, Xvfb, xwininfo, import" in str(why)
    (shared / ros_env.RVIZ_TARBALL).write_bytes(b"")
    why = rviz_unavailable(env)
    assert why is not None and why.must_fail and f"tar -C / --zstd -xf {shared / ros_env.RVIZ_TARBALL}" in str(why)
    index = prefix / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    (index / "rviz2").write_text("")
    for tool in ros_env.RVIZ_TOOLS:
        (tools / tool).write_text("#!/bin/sh\n")
        (tools / tool).chmod(0o755)
    assert rviz_unavailable(env) is None
