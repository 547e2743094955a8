"""`pebal replay --ray` and `pebal calibrate --ray` on real local Ray clusters, no mocks.

* Ray's own ``ray.cluster_utils.Cluster`` (a head without CPUs + two 1-CPU worker nodes on this
  machine), as Ray tests its own fault tolerance: a worker node removed while it replays a bag (its
  worker is frozen with SIGSTOP first, so the bag is certainly unfinished), a corrupt bag in the
  folder, the driver interrupted with SIGINT and resumed, calibration merged across workers.
* A ``ray start --head`` cluster reached by address through the CLI, then stopped by the ids of its
  own processes (``ray stop`` would stop every Ray cluster on the machine, other users' too).

Every fleet result is compared with a local replay of the same bags: semantic and mask identical,
scores within 1e-6, the deterministic part of every summary equal.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_replay_helpers import frames, tiny_onnx

ray = pytest.importorskip("ray", reason="Ray is not installed (the ray extra: pip install 'pebal_ros[ray]')")

from pebal_ros.cli import main  # noqa: E402
from pebal_ros.fleet import done as dn  # noqa: E402
from pebal_ros.replay.bag import BagReader, make_typestore  # noqa: E402
from pebal_ros.replay.recording import write_recording  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
THR = "-3.9"
OBJECT_STORE = 80 * 1024 * 1024
GOOD = ("drive_a", "drive_b", "drive_c", "drive_d")


@pytest.fixture(scope="module")
def cluster():
    """Head (no CPUs: the driver only) + two worker nodes of 1 CPU, small object stores, no dashboard."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A heavily shared machine can take longer than Ray's default minute to start a node's services.
    os.environ.setdefault("RAY_DASHBOARD_STARTUP_TIMEOUT_S", "600")
    temp = tempfile.mkdtemp(prefix="pebal_rc_", dir="/tmp")        # short: Ray's socket paths
    for attempt in range(3):
        c = Cluster(shutdown_at_exit=True)
        try:
            c.add_node(num_cpus=0, object_store_memory=OBJECT_STORE, include_dashboard=False, temp_dir=temp)
            for _ in range(2):
                c.add_node(num_cpus=1, object_store_memory=OBJECT_STORE, temp_dir=temp)
            c.wait_for_nodes()
            break
        except Exception:  # noqa: BLE001 - Ray's 30 s node start-up deadline on an overloaded machine
            c.shutdown()
            if attempt == 2:
                raise
    ray.init(address=c.address, log_to_driver=False, logging_level=logging.ERROR)
    yield c
    ray.shutdown()
    c.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fleet_ray")
    model = tiny_onnx(root / "tiny.onnx")
    for i, name in enumerate(GOOD):
        write_recording(root / "bags" / name, frames(60 + 15 * i, seed=40 + i))
    (root / "bags" / "broken").mkdir()
    (root / "bags" / "broken" / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    local = root / "local"
    # The reference: the one-machine replay of the same folder, same options.
    assert main(["replay", str(root / "bags"), "--out", str(local), "--model", str(model), "--threshold", THR,
                 "--reproducible", "--no-progress"]) == 1         # 1: the broken bag
    return {"root": root, "model": model, "bags": root / "bags", "local": local}


def _messages(bag: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with BagReader(bag) as reader:
        store = make_typestore(reader.topics.values())
        for m in reader.messages():
            out.setdefault(m.topic, []).append((m.timestamp, store.deserialize_cdr(m.data, m.msgtype)))
    return out


def assert_same_as_local(fleet_dir: Path, local_dir: Path) -> None:
    """One bag's fleet result against the local replay's: masks and semantics bit-equal, scores
    within 1e-6, status messages equal, the deterministic summary equal."""
    a, b = _messages(fleet_dir / "result_bag"), _messages(local_dir / "result_bag")
    assert sorted(a) == sorted(b)
    for topic in a:
        assert [t for t, _ in a[topic]] == [t for t, _ in b[topic]], topic
        for (_, ma), (_, mb) in zip(a[topic], b[topic]):
            if topic.endswith("anomaly_score"):
                np.testing.assert_allclose(ma.data.view(np.float32), mb.data.view(np.float32), rtol=0, atol=1e-6)
            elif topic.endswith("status"):
                assert (ma.anomaly_fraction, len(ma.regions)) == (mb.anomaly_fraction, len(mb.regions))
                assert ma.max_score == pytest.approx(mb.max_score, abs=1e-6)
            else:
                assert np.array_equal(ma.data, mb.data), topic
    da = json.loads((fleet_dir / "report" / "summary.json").read_text())["deterministic"]
    db = json.loads((local_dir / "report" / "summary.json").read_text())["deterministic"]
    for d in (da, db):
        # The report names the final folder and the bag as given (a relative path stays relative).
        assert d["result_bag"].endswith(f"{fleet_dir.name}/result_bag") and dn.PARTIAL not in d["result_bag"]
        assert Path(d.pop("bag")).name == fleet_dir.name
        d.pop("result_bag")
    for d in (da, db):
        for k in ("max_fraction", "mean_fraction"):
            d["anomaly"][k] = round(d["anomaly"][k], 6)
    assert json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)


def _summary(out: Path) -> dict:
    return json.loads((out / "fleet_summary.json").read_text())


def _replay_args(data: dict, out: Path, address: str, *extra: str) -> list[str]:
    return ["replay", str(data["bags"]), "--out", str(out), "--model", str(data["model"]), "--threshold", THR,
            "--reproducible", "--no-progress", "--ray", address, *extra]


def _freeze_a_running_attempt(out: Path, node_ids: set[str], alive) -> dict:
    """Wait for an attempt that runs on one of ``node_ids`` and freeze its worker (SIGSTOP) before it
    can finish: it is then certainly mid-bag."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and alive():
        for started in sorted((out / dn.PARTIAL).glob("*/.started.json")):
            try:
                info = json.loads(started.read_text())
            except (OSError, ValueError):
                continue
            if info.get("node_id") not in node_ids:
                continue
            os.kill(info["pid"], signal.SIGSTOP)
            if started.exists() and not (started.parent / dn.MARKER).exists():
                return dict(info, folder=started.parent)
            os.kill(info["pid"], signal.SIGCONT)        # it finished just before: take another
        time.sleep(0.05)
    pytest.fail("no bag started on a worker node")


def test_node_lost_mid_bag_and_corrupt_bag(cluster, data, tmp_path: Path) -> None:
    """A worker node removed while its worker replays a bag: that bag is retried on the other node
    and the run completes, every bag identical to the local replay; the corrupt bag is reported
    once, never retried."""
    out = tmp_path / "fleet"
    result: dict = {}
    driver = threading.Thread(target=lambda: result.update(code=main(_replay_args(data, out, cluster.address))))
    driver.start()
    nodes = {n.node_id: n for n in cluster.worker_nodes}
    frozen = _freeze_a_running_attempt(out, set(nodes), driver.is_alive)
    try:
        cluster.remove_node(nodes[frozen["node_id"]], allow_graceful=False)
    finally:
        try:
            os.kill(frozen["pid"], signal.SIGKILL)         # orphaned by its raylet, still frozen
        except ProcessLookupError:
            pass
    driver.join(600)
    # (The cluster keeps one worker node: the tests after this one need no more.)
    assert result["code"] == 1                                   # 1: the broken bag, as locally
    s = _summary(out)
    assert s["status"] == "complete"
    rows = {r["output"]: r for r in s["bags"]}
    lost = Path(frozen["bag"]).name
    assert rows[lost]["attempts"] == 2 and "worker lost" in rows[lost]["reason"]
    assert rows["broken"]["outcome"] == "failed" and rows["broken"]["attempts"] == 1
    assert "no image topics" in rows["broken"]["reason"]
    for name in GOOD:
        assert rows[name]["outcome"] == "ok" and dn.bag_complete(out / name) is not None
        assert_same_as_local(out / name, data["local"] / name)
    assert not (out / dn.PARTIAL).exists()
    assert s["fleet"]["frames_processed"] == sum(60 + 15 * i for i in range(len(GOOD)))


def test_interrupt_then_resume(cluster, data, tmp_path: Path) -> None:
    """SIGINT to the driver: no traceback, exit 130, finished bags committed, the rest reported
    missing and nothing else looking complete; --resume then replays exactly the missing bags."""
    out = data["root"] / f"fleet_{tmp_path.name}"
    # PYTHONFAULTHANDLER: should the driver ever hang, SIGABRT makes it print every thread's stack.
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", PYTHONFAULTHANDLER="1")
    # Relative paths, from a folder the workers do not run in: the driver must hand them absolute ones.
    args = ["replay", "bags", "--out", out.name, "--model", str(data["model"]), "--threshold", THR,
            "--reproducible", "--no-progress", "--ray", cluster.address, "--ray-workers", "1"]
    # As from a terminal, where Ctrl-C reaches it: a suite started in the background (`cmd &`, nohup)
    # hands its children SIGINT *ignored*, and a Python started so never raises KeyboardInterrupt.
    as_at_a_terminal = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "sys.argv[0] = 'pebal'; runpy.run_module('pebal_ros.cli', run_name='__main__')")
    proc = subprocess.Popen([sys.executable, "-c", as_at_a_terminal, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=data["root"])
    try:
        # Wait for one committed bag, then freeze the worker in its next one and interrupt.
        deadline = time.monotonic() + 300
        while not list(out.glob(f"*/{dn.MARKER}")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        nodes = {n.node_id for n in cluster.worker_nodes}
        frozen = _freeze_a_running_attempt(out, nodes, lambda: proc.poll() is None)
        proc.send_signal(signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            stdout, stderr = proc.communicate(timeout=60)
            pytest.fail(f"the driver did not stop within 300 s of SIGINT; its threads:\n{stderr[-6000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        os.kill(frozen["pid"], signal.SIGCONT)      # the driver killed its actor; in case it did not
    except ProcessLookupError:
        pass
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr and "--resume" in stderr
    s = _summary(out)
    assert s["status"] == "incomplete"
    done = {r["output"] for r in s["bags"] if r["outcome"] in ("ok", "failed")}
    missing = {Path(m["bag"]).name for m in s["missing"]}
    assert done and missing and Path(frozen["bag"]).name in missing
    assert all("interrupted" in m["reason"] for m in s["missing"])
    for name in GOOD + ("broken",):
        marker = (out / name / dn.MARKER).exists()
        assert marker == (name in done) and (dn.bag_complete(out / name) is not None) == marker
    assert "INCOMPLETE" in (out / "index.html").read_text()
    assert not (out / dn.PARTIAL).exists()
    before = {name: (out / name / dn.MARKER).stat().st_mtime_ns for name in done}

    assert main(_replay_args(data, out, cluster.address, "--resume")) == 1      # the broken bag
    s = _summary(out)
    assert s["status"] == "complete" and s["run"]["resumed"] == len(done)
    assert {r["output"] for r in s["bags"] if r["this_run"]} == missing        # only those replayed
    assert {name: (out / name / dn.MARKER).stat().st_mtime_ns for name in done} == before
    for name in GOOD:
        assert_same_as_local(out / name, data["local"] / name)


def test_calibrate_on_ray_equals_single_process(cluster, data, tmp_path: Path) -> None:
    """The bags scored on two workers and merged: the same threshold and figures as one process."""
    from pebal_ros.calibration import read_calibration

    bags = [str(data["bags"] / n) for n in GOOD[:3]]
    common = ["calibrate", *bags, "--model", str(data["model"]), "--pixel-fpr", "0.01", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "one.yaml")]) == 0
    assert main([*common, "--output", str(tmp_path / "ray.yaml"), "--ray", cluster.address]) == 0
    one, par = read_calibration(tmp_path / "one.yaml"), read_calibration(tmp_path / "ray.yaml")
    assert par.threshold == one.threshold
    assert par.achieved == one.achieved and par.frames == one.frames == 60 + 75 + 90
    assert par.input_size == one.input_size


# -- a `ray start --head` cluster, by address -------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stop_cluster(temp_dir: str, port: int) -> None:
    """`ray stop`, limited to one cluster: the processes whose command line names its temp folder or
    its port, and their children, by process id."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if temp_dir in cmd or f":{port}" in cmd:
            procs[p.pid] = p
    for p in list(procs.values()):
        try:
            procs.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    procs.pop(os.getpid(), None)
    for p in procs.values():
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=20)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_cli_reaches_a_ray_start_cluster_by_address(data, tmp_path: Path) -> None:
    """`ray start --head` on loopback (its own ports, temp folder and token), `pebal replay ... --ray
    127.0.0.1:PORT` as a separate process: the bags replayed there equal the local replay."""
    port, dash, client, agent = _free_ports(4)
    temp = tempfile.mkdtemp(prefix="pebal_rs_", dir="/tmp")
    import secrets

    # Token authentication, as Ray >= 2.5x asks of a cluster started with `ray start`: the cluster and
    # the driver share the token through the environment (never ~/.ray: other users' clusters).
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32))
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    assert ray_cli, "the ray command line (installed with Ray) is not on PATH"
    start = subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                            "--num-cpus", "1", "--temp-dir", temp, "--include-dashboard", "false",
                            "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
                            "--dashboard-agent-listen-port", str(agent), "--object-store-memory", str(OBJECT_STORE),
                            "--disable-usage-stats"], capture_output=True, text=True, timeout=300, env=env)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        out = tmp_path / "fleet"
        bags = [str(data["bags"] / n) for n in GOOD[:2]]
        r = subprocess.run([sys.executable, "-m", "pebal_ros.cli", "replay", *bags, "--out", str(out), "--model",
                            str(data["model"]), "--threshold", THR, "--reproducible", "--no-progress",
                            "--ray", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f":{port}: 1 node(s), 1 CPU(s)" in r.stdout            # (Ray names it by the node's IP)
        s = _summary(out)
        assert s["status"] == "complete" and s["run"]["cluster"]["address"].endswith(f":{port}")
        for name in GOOD[:2]:
            assert_same_as_local(out / name, data["local"] / name)
    finally:
        _stop_cluster(temp, port)
        shutil.rmtree(temp, ignore_errors=True)
