"""The fleet's parts that need no Ray: the worker's per-bag record and done marker, committing and
resuming, the fleet report's pooling (ground truth from merged histograms against one replay over
all frames), the model shipment, and `--ray` without Ray installed. The cluster itself:
test_fleet_ray.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from test_replay_helpers import frames, tiny_onnx

from pebal_ros.fleet import done as dn
from pebal_ros.fleet.figures import LATENCY_EDGES_MS, dense_histogram, histogram_percentiles, latency_histogram
from pebal_ros.fleet.report import write_fleet_report
from pebal_ros.fleet.replay import plan
from pebal_ros.fleet.worker import FleetWorker, ModelShipment, local_model, sha256
from pebal_ros.model_settings import resolve_settings
from pebal_ros.replay.recording import write_recording
from pebal_ros.replay.replay import ReplayOptions, replay_bag

REPO = Path(__file__).resolve().parents[1]
THR = -3.9


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def worker(model: Path) -> FleetWorker:
    ship = ModelShipment(str(model), sha256(model), [model.read_bytes()])
    return FleetWorker(resolve_settings(model), ship, threads=1, unsafe=False)


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three labelled drives of different lengths, and one drive holding all their frames."""
    root = tmp_path_factory.mktemp("fleet_bags")
    out: dict[str, Path] = {}
    everything = []
    for i, n in enumerate((7, 12, 9)):
        f = frames(n, seed=20 + i)
        everything += f
        write_recording(root / "bags" / f"drive{i}", f)
        out[f"drive{i}"] = root / "bags" / f"drive{i}"
    write_recording(root / "all", everything)
    out["all"] = root / "all"
    return out


def _opts() -> ReplayOptions:
    return ReplayOptions(threshold=THR, progress=False)


def _entries(worker: FleetWorker, bags: dict[str, Path], out: Path, names=("drive0", "drive1", "drive2")) -> list:
    entries = []
    for i, name in enumerate(names):
        tmp = out / dn.PARTIAL / f"{i:06d}-0"
        record = worker.replay(str(bags[name]), name, str(tmp), _opts(), 1)
        dn.commit(tmp, out / name)
        entries.append({"key": i, "bag": str(bags[name]), "out": out / name, "state": "replayed",
                        "record": record, "reason": "", "attempts": 1})
    return entries


def test_pooled_ground_truth_is_one_histogram_over_all_frames(worker, bags, model, tmp_path: Path) -> None:
    """The fleet report's metrics come from the bags' merged histograms and confusion matrices: the
    same counts, and so the same AUROC/AP/FPR95/mIoU, as one replay of a bag holding every frame."""
    from pebal_ros.runtime import load_runtime

    out = tmp_path / "fleet"
    entries = _entries(worker, bags, out)
    index = write_fleet_report(out, entries, {"problems": []})
    summary = json.loads((out / "fleet_summary.json").read_text())
    one = replay_bag(bags["all"], load_runtime(model, device="cpu"), tmp_path / "one", _opts())
    ref = one.summary["deterministic"]["ground_truth"]
    gt = summary["ground_truth"]
    assert gt["frames_with_labels"] == ref["frames_with_labels"] == 28
    assert gt["metrics"] == ref["metrics"]                        # exactly: same bins, same counts
    assert gt["miou"] == ref["miou"] and gt["anomaly_iou"] == ref["anomaly_iou"]
    from pebal_ros.fleet.report import pooled_ground_truth
    pooled = pooled_ground_truth(out, entries)
    assert np.array_equal(pooled.ood.counts, one.accuracy.ood.counts)
    assert np.array_equal(pooled.binary_conf, one.accuracy.binary_conf)
    assert np.array_equal(pooled.seg.confusion, one.accuracy.seg.confusion)
    assert summary["status"] == "complete" and "INCOMPLETE" not in index.read_text()
    assert {p for p in summary["plots"]} == {"fleet_alarms.png", "fleet_roc.png", "fleet_pr.png"}


def test_fleet_figures_pooled_from_frames(worker, bags, tmp_path: Path) -> None:
    """Frame counts, anomaly and alarm rates pooled over frames (not bags), the worst frames across
    the fleet, and latency percentiles from the summed per-bag counts, against frames.csv itself."""
    import csv

    out = tmp_path / "fleet"
    entries = _entries(worker, bags, out)
    write_fleet_report(out, entries, {"problems": []})
    s = json.loads((out / "fleet_summary.json").read_text())
    rows = []
    for name in ("drive0", "drive1", "drive2"):
        with (out / name / "report" / "frames.csv").open() as fh:
            rows += [dict(r, bag=name) for r in csv.DictReader(fh)]
    f = s["fleet"]
    assert f["frames_processed"] == len(rows) == 28
    assert f["alarms"] == sum(int(r["regions"]) > 0 for r in rows)
    assert f["mean_anomaly_fraction"] == pytest.approx(np.mean([float(r["anomaly_fraction"]) for r in rows]), abs=1e-12)
    worst = sorted(rows, key=lambda r: -float(r["anomaly_fraction"]))[:12]
    assert [w["anomaly_fraction"] for w in s["worst_frames"]] == [float(r["anomaly_fraction"]) for r in worst]
    assert all(w["report"].endswith("/report/report.html") and (out / w["report"]).is_file() for w in s["worst_frames"])
    lat = np.array([float(r["latency_ms"]) for r in rows])
    for p in (50, 95):
        got, exact = f["latency_ms"][f"p{p}"], np.percentile(lat, p, method="inverted_cdf")
        assert exact / 1.024 <= got <= exact * 1.024                 # within one 2.3 % bin
    # the histogram helpers alone
    assert sum(latency_histogram(np.array([1e-9, 5.0, 1e12])).values()) == 3
    assert dense_histogram(latency_histogram(np.array([1e-9, 5.0, 1e12])))[[0, -1]].tolist() == [1, 1]
    assert histogram_percentiles(dense_histogram(latency_histogram(np.full(10, 7.0))))["p50"] == \
        pytest.approx(7.0, rel=0.012)
    assert len(LATENCY_EDGES_MS) == 801


def test_done_marker_commit_and_resume_plan(worker, bags, tmp_path: Path) -> None:
    """A bag is complete only with its marker and every file it lists at the listed size; plan()
    keeps complete bags with --resume, redoes the rest, and refuses leftovers without a flag."""
    out = tmp_path / "fleet"
    entries = _entries(worker, bags, out, names=("drive0", "drive1"))
    assert not (out / dn.PARTIAL / "000000-0").exists()           # the attempt's folder moved away
    rec = dn.bag_complete(out / "drive0")
    assert rec is not None and rec["bag"] == entries[0]["bag"] and rec["exit_code"] == 0
    assert {"result_bag/metadata.yaml", "report/summary.json", "report/report.html", "ground_truth.npz"} <= set(rec["files"])
    # drive1: a result file cut short -> not complete; drive2: never replayed; drive3: leftovers only
    mcap = next((out / "drive1" / "result_bag").glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:-10])
    assert dn.bag_complete(out / "drive1") is None
    (out / "drive3" / "report").mkdir(parents=True)
    names = ["drive0", "drive1", "drive2", "drive3"]
    paths = [Path(f"/x/{n}") for n in names]
    states = [e["state"] for e in plan(paths, [out / n for n in names], resume=True, overwrite=False)]
    assert states == ["complete", "todo", "todo", "todo"]
    states = [e["state"] for e in plan(paths, [out / n for n in names], resume=False, overwrite=False)]
    assert states == ["refused", "refused", "todo", "refused"]
    states = [e["state"] for e in plan(paths, [out / n for n in names], resume=True, overwrite=True)]
    assert states == ["todo"] * 4
    # a marker of another format, or none at all, is never complete
    (out / "drive0" / dn.MARKER).write_text(json.dumps(dict(rec, format="other")))
    assert dn.bag_complete(out / "drive0") is None


def test_bad_bag_is_a_record_and_incomplete_run_says_so(worker, bags, tmp_path: Path) -> None:
    """A corrupt bag returns a record with the reason (a result, not an exception to retry); bags
    without a result make the fleet report say INCOMPLETE and list them with the reason."""
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "broken.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    out = tmp_path / "fleet"
    rec = worker.replay(str(bad), "broken", str(out / dn.PARTIAL / "x"), _opts(), 1)
    assert rec["exit_code"] == 1 and "no image topics" in rec["error"]
    dn.commit(out / dn.PARTIAL / "x", out / "broken")
    assert dn.bag_complete(out / "broken")["error"] == rec["error"]
    entries = _entries(worker, bags, out, names=("drive0",))
    entries.append({"key": 1, "bag": str(bad), "out": out / "broken", "state": "replayed", "record": rec,
                    "reason": rec["error"], "attempts": 1})
    entries.append({"key": 2, "bag": "/x/drive9", "out": out / "drive9", "state": "missing", "record": None,
                    "reason": "not replayed: the run was interrupted (Ctrl-C) before this bag finished"})
    index = write_fleet_report(out, entries, {"problems": ["/x/locked: cannot look inside: Permission denied"]})
    s = json.loads((out / "fleet_summary.json").read_text())
    assert s["status"] == "incomplete" and s["missing"] == [{"bag": "/x/drive9", "reason": entries[2]["reason"]}]
    outcome = {r["output"]: r["outcome"] for r in s["bags"]}
    assert outcome == {"drive0": "ok", "broken": "failed", "drive9": "not replayed"}
    page = index.read_text()
    assert "INCOMPLETE" in page and "interrupted (Ctrl-C)" in page and "no image topics" in page
    assert "Permission denied" in page
    assert not list(out.glob(".*.tmp"))                               # every file renamed into place


def test_model_reaches_a_node_that_cannot_see_the_path(model: Path, tmp_path: Path, monkeypatch) -> None:
    """A worker whose node does not see the driver's model file (or sees different bytes) writes
    the shipped bytes into its own cache once and opens that."""
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))
    data = model.read_bytes()
    ship = ModelShipment(str(tmp_path / "elsewhere" / "tiny.onnx"), sha256(model), [b"ref"])
    fetched = []
    got = local_model(ship, fetch=lambda ref: fetched.append(ref) or data)
    assert got.read_bytes() == data and got.name == "tiny.onnx" and fetched == [b"ref"]
    assert local_model(ship, fetch=lambda ref: pytest.fail("fetched twice")) == got
    same = ModelShipment(str(model), sha256(model), [b"ref"])
    assert local_model(same, fetch=lambda ref: pytest.fail("the path holds the same bytes")) == model


@pytest.mark.parametrize("command", ["replay", "calibrate"])
def test_ray_flag_without_ray_says_how_to_install(command: str, tmp_path: Path) -> None:
    """Ray made unimportable (a sys.modules block): --ray answers in one line with the pip command,
    before any model is loaded; the same command without --ray does not need Ray."""
    bag = tmp_path / "bag"
    write_recording(bag, frames(2))
    args = [command, str(bag), "--ray"] + (["--out", str(tmp_path / "o")] if command == "replay" else ["--dry-run"])
    code = ("import sys; sys.modules['ray'] = None\n"
            "from pebal_ros.cli import main\n"
            f"sys.exit(main({args!r}))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2, r.stderr
    assert f"pebal {command}: --ray needs Ray" in r.stderr and "pip install 'pebal_ros[ray]'" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fleet_flags_need_ray_and_not_jobs(tmp_path: Path, capsys) -> None:
    from pebal_ros.cli import main

    assert main(["replay", str(tmp_path), "--out", str(tmp_path / "o"), "--resume"]) == 2
    assert "--resume goes with --ray" in capsys.readouterr().err
    assert main(["replay", str(tmp_path), "--out", str(tmp_path / "o"), "--ray", "-j", "4"]) == 2
    assert "--ray-workers" in capsys.readouterr().err


def test_bags_named_by_uri_through_pyarrow(worker, bags, model, tmp_path: Path) -> None:
    """file:// URIs through pyarrow's file systems (the code path of s3:// and gs://): the same bags
    found as on disk, each staged to the worker's scratch space and replayed into the same results
    as the local replay of the path; the report names the URI."""
    pytest.importorskip("pyarrow", reason="pyarrow (part of the ray extra) is not installed")
    from pebal_ros.fleet.storage import find_uri_bags, uri_names
    from pebal_ros.replay.bag import find_bags
    from pebal_ros.replay.cli import _names
    from pebal_ros.runtime import load_runtime

    root = bags["drive0"].parent
    (root / "deeper" / "day2").mkdir(parents=True, exist_ok=True)
    loose = root / "deeper" / "day2" / "loose.mcap"
    if not loose.exists():
        import shutil
        shutil.copyfile(next(bags["drive1"].glob("*.mcap")), loose)
    found, problems = find_uri_bags([f"file://{root}", f"file://{tmp_path}/nothing"])
    local, _ = find_bags(root)
    assert found == [f"file://{p}" for p in local] and len(found) == 4
    assert problems == [f"file://{tmp_path}/nothing: does not exist"]
    assert uri_names(found) == _names(local)

    uri = f"file://{bags['drive1']}"
    tmp = tmp_path / "fleet" / dn.PARTIAL / "a"
    rec = worker.replay(uri, "drive1", str(tmp), _opts(), 1, str(tmp_path / "fleet" / "drive1"))
    assert rec["exit_code"] == 0 and rec["bag"] == uri
    dn.commit(tmp, tmp_path / "fleet" / "drive1")
    ref = replay_bag(bags["drive1"], load_runtime(model, device="cpu"), tmp_path / "ref", _opts())
    got = json.loads((tmp_path / "fleet" / "drive1" / "report" / "summary.json").read_text())["deterministic"]
    want = ref.summary["deterministic"]
    assert got["bag"] == uri and uri in (tmp_path / "fleet" / "drive1" / "report" / "report.html").read_text()
    for d in (got, want):
        d.pop("bag"), d.pop("result_bag")
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)
    assert not list(Path(tempfile.gettempdir()).glob("pebal_stage_*"))        # the staged copy is gone
    missing = worker.replay(f"file://{tmp_path}/gone", "gone", str(tmp_path / "p2"), _opts(), 1)
    assert missing["exit_code"] == 1 and f"file://{tmp_path}/gone" in missing["error"]
