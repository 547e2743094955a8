"""The output folder: one run at a time (a lock, free again when its holder dies), and results that
appear only complete: a full disk gives exit 1, an error naming the output file and a summary.json
that says "incomplete" and why, never a report that looks finished.

A full disk is made for real with RLIMIT_FSIZE in a child process (writes past N bytes fail with
EFBIG, exactly where a full disk fails with ENOSPC): no root, no mounts, works on CI.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_replay_helpers import frames, tiny_onnx

from pebal_ros.output_folder import FolderBusy, OutputFolder, folder_lock
from pebal_ros.replay.recording import write_recording
from pebal_ros.replay.replay import ReplayError, ReplayOptions, replay_bag

THR = -3.9
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bags") / "drive"
    write_recording(path, frames(8))
    return path


def _pebal(args: list[str], fsize: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # EFBIG instead of being killed
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, "-m", "pebal_ros.cli", *args], capture_output=True, text=True,
                          preexec_fn=limit, env=env, timeout=600, cwd=REPO)


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding --out's lock until its stdin closes (a run in progress)."""
    code = textwrap.dedent(f"""
        import sys
        from pebal_ros.output_folder import folder_lock
        with folder_lock({str(folder)!r}):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, cwd=REPO)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    return p


# -- one run per output folder -------------------------------------------------------------------
def test_second_run_into_the_same_out_is_refused(drive: Path, model: Path, tmp_path: Path, capsys) -> None:
    """Two `--overwrite` runs into one --out both exited 0 while one deleted the other's result;
    now the second says who holds the folder, in one line, and exits 1 before doing anything."""
    from pebal_ros.cli import main

    out = tmp_path / "out"
    common = ["--model", str(model), "--threshold", str(THR), "--no-progress", "--overwrite"]
    first = _holder(out)
    try:
        assert main(["replay", str(drive), "--out", str(out), *common]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"pebal replay: --out {out} is in use by pid {first.pid}"]
        assert not (out / "result_bag").exists() and not (out / "report").exists()
        # the library call a fleet runner makes gets a ReplayError, not a silent overwrite
        with pytest.raises(ReplayError, match=f"in use by pid {first.pid}"):
            replay_bag(drive, None, out, ReplayOptions(threshold=THR, progress=False, overwrite=True))
    finally:
        first.communicate("")
    assert main(["replay", str(drive), "--out", str(out), *common]) == 0    # free again
    assert json.loads((out / "report" / "summary.json").read_text())["deterministic"]["status"] == "ok"


def test_lock_of_a_killed_run_is_free(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = _holder(out)
    with pytest.raises(FolderBusy):
        with folder_lock(out):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / ".pebal.lock").exists()      # the file stays, the lock does not
    with folder_lock(out):
        with folder_lock(out):                 # re-entrant for this thread (CLI, then replay_bag)
            pass


def test_output_folder_commit_and_abandon(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    (out / "report" / "old.txt").write_text("old")
    with pytest.raises(FileExistsError):
        with OutputFolder(out, ("report",)):
            pass
    with OutputFolder(out, ("report", "result_bag"), overwrite=True) as f:   # a run that fails
        f.stage("report").mkdir()
        (f.stage("report") / "new.txt").write_text("half")
    assert (out / "report" / "old.txt").read_text() == "old"               # untouched
    assert sorted(p.name for p in out.iterdir()) == [".pebal.lock", "report"]
    (out / ".partial-999999").mkdir()                                        # left by a killed run
    with OutputFolder(out, ("report", "result_bag"), overwrite=True) as f:
        assert not (out / ".partial-999999").exists()
        f.stage("report").mkdir()
        (f.stage("report") / "new.txt").write_text("new")
        assert not (out / "report" / "new.txt").exists()                     # not before commit
        f.commit()
    assert sorted(p.name for p in (out / "report").iterdir()) == ["new.txt"]


# -- a full disk ---------------------------------------------------------------------------------
def _sizes(drive: Path, model: Path, out: Path, extra: list[str]) -> dict[str, int]:
    proc = _pebal(["replay", str(drive), "--out", str(out), "--model", str(model), "--threshold", str(THR),
                   "--no-progress", *extra])
    assert proc.returncode == 0, proc.stderr
    return {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}


def test_full_disk_at_the_contact_sheet(drive: Path, model: Path, tmp_path: Path) -> None:
    """The contact sheet's failed write was ignored (exit 0, summary "ok"). Now: exit 1, one line
    naming report/contact_sheet.png, summary.json "incomplete" with the reason, nothing else in
    report/; the result bag, closed intact before the failure, is kept."""
    extra = ["--outputs", "status"]          # a small result bag: the contact sheet is the largest file
    sizes = _sizes(drive, model, tmp_path / "ref", extra)
    sheet = sizes.pop("report/contact_sheet.png")
    before = [sizes["result_bag/result_bag.mcap"], sizes["report/anomaly_over_time.png"],
              sizes["report/summary.json"] + 2000]
    assert max(before) < sheet, (sizes, sheet)       # the precondition of this test: sizes, not timing
    out = tmp_path / "out"
    proc = _pebal(["replay", str(drive), "--out", str(out), "--model", str(model), "--threshold", str(THR),
                   "--no-progress", *extra], fsize=max(before) + 1)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"pebal replay: {out / 'report' / 'contact_sheet.png'}: File too large")
    assert str(drive) not in lines[0]
    summary = json.loads((out / "report" / "summary.json").read_text())["deterministic"]
    assert summary["status"] == "incomplete"
    assert summary["incomplete"] == f"{out / 'report' / 'contact_sheet.png'}: File too large"
    assert summary["status_text"].startswith("incomplete") and "8 of 8 frames processed" in summary["status_text"]
    assert sorted(p.name for p in (out / "report").iterdir()) == ["summary.json"]
    assert (out / "result_bag" / "metadata.yaml").is_file() and summary["result_bag"]
    assert not [p for p in out.iterdir() if p.name.startswith(".partial")]


def test_full_disk_in_the_result_bag(drive: Path, model: Path, tmp_path: Path) -> None:
    """The result bag cannot be written to the end: exit 1 naming the result bag, no half bag left
    and no report that looks complete (was: a report dir and no summary saying why)."""
    sizes = _sizes(drive, model, tmp_path / "ref", [])
    bag_size = sizes["result_bag/result_bag.mcap"]
    limit = bag_size // 2
    assert sizes["report/summary.json"] + 2000 < limit, sizes
    out = tmp_path / "out"
    proc = _pebal(["replay", str(drive), "--out", str(out), "--model", str(model), "--threshold", str(THR),
                   "--no-progress"], fsize=limit)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"pebal replay: {out / 'result_bag'}: File too large"), lines
    assert str(drive) not in lines[0] and ".partial" not in lines[0]
    summary = json.loads((out / "report" / "summary.json").read_text())["deterministic"]
    assert summary["status"] == "incomplete" and summary["result_bag"] is None
    assert sorted(p.name for p in out.iterdir()) == [".pebal.lock", "report"]
    assert sorted(p.name for p in (out / "report").iterdir()) == ["summary.json"]


def test_full_disk_keeps_the_previous_result_when_nothing_fits(drive: Path, model: Path, tmp_path: Path) -> None:
    """--overwrite of a complete result with a disk too full even for summary.json: the old result
    goes (it was asked to be replaced), and nothing claims to be the new one."""
    out = tmp_path / "out"
    assert _pebal(["replay", str(drive), "--out", str(out), "--model", str(model), "--threshold", str(THR),
                   "--no-progress"]).returncode == 0
    proc = _pebal(["replay", str(drive), "--out", str(out), "--model", str(model), "--threshold", str(THR),
                   "--no-progress", "--overwrite"], fsize=1000)
    assert proc.returncode == 1 and "File too large" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".pebal.lock"]
