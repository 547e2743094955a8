"""Expected failures give one line on stderr and a non-zero exit, never a traceback.

Tests run as root here, and root ignores permission bits: unwritable folders are staged as a path under
a regular file (fails for everyone), and the permission cases run the command as the unprivileged user
``nobody`` through ``setpriv`` (or directly when the tests already run unprivileged).
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pebal_ros.cli import error_message, main
from pebal_ros.outputs import writable_folder, write_ok
from pebal_ros.replay.recording import write_recording


def _one_line(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith(f"pebal {command}: "), err
    return lines[-1]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "street.png"
    cv2.imwrite(str(path), np.zeros((16, 32, 3), np.uint8))
    return path


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    write_recording(tmp_path / "drive", [(np.zeros((8, 8, 3), np.uint8), None)], label_topic=None)
    return tmp_path / "drive"


# -- output folders that cannot be created (a path below a regular file fails for root too) ------------
@pytest.mark.parametrize("command", ["demo", "infer", "replay"])
def test_out_below_a_file(command: str, tmp_path: Path, image: Path, bag: Path, capsys) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    out = blocker / "out"
    args = {"demo": ["demo", "--out", str(out)], "infer": ["infer", str(image), "--out", str(out)],
            "replay": ["replay", str(bag), "--out", str(out)]}[command]
    assert main(args) == 1
    line = _one_line(capsys.readouterr().err, command)
    assert str(out) in line and "a file, not a folder" in line


def test_config_missing_is_a_config_problem(image: Path, tmp_path: Path, capsys) -> None:
    assert main(["infer", str(image), "--out", str(tmp_path / "o"), "--config", "/nope.yaml"]) == 2
    line = _one_line(capsys.readouterr().err, "infer")
    assert "--config /nope.yaml" in line and "no such file" in line.lower() and "model" not in line


@pytest.mark.parametrize("command", ["demo", "infer", "replay"])
def test_config_not_yaml(command: str, tmp_path: Path, image: Path, bag: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("inference:\n  threshold: [1, 2\n")
    out = str(tmp_path / "o")
    args = {"demo": ["demo", "--out", out], "infer": ["infer", str(image), "--out", out],
            "replay": ["replay", str(bag), "--out", out]}[command]
    assert main([*args, "--config", str(bad)]) == 2
    line = _one_line(capsys.readouterr().err, command)
    assert str(bad) in line and "not valid YAML" in line and "line 3" in line


# -- the mapping itself -----------------------------------------------------------------------------
def test_error_message_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    msg, code = error_message(PermissionError(errno.EACCES, "Permission denied", "/data/out"))
    assert code == 1 and msg.startswith("/data/out: permission denied")
    msg, code = error_message(OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"))
    assert "read-only file system" in msg and "/mnt/ro/x" in msg
    msg, code = error_message(OSError(errno.ENOSPC, "No space left on device"))
    assert msg == "no space left on the device" and code == 1
    try:
        yaml.safe_load("a: [b")
    except yaml.YAMLError as exc:
        msg, code = error_message(exc)
    assert code == 2 and "not valid YAML" in msg and "\n" not in msg
    msg, _ = error_message(PermissionError(errno.EACCES, "Permission denied", "/ro/cache/onnx/x.onnx"))
    assert "PEBAL_CACHE" not in msg
    monkeypatch.setenv("PEBAL_CACHE", "/ro/cache")
    msg, _ = error_message(PermissionError(errno.EACCES, "Permission denied", "/ro/cache/onnx/x.onnx"))
    assert msg.startswith("/ro/cache/onnx/x.onnx: permission denied") and "set PEBAL_CACHE" in msg
    assert error_message(ZeroDivisionError("a bug")) is None      # bugs keep their traceback
    assert error_message(KeyError("x")) is None


def test_writable_folder_and_write_ok(tmp_path: Path) -> None:
    assert writable_folder(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []           # the probe file is gone
    with pytest.raises(OSError) as info:
        write_ok(False, tmp_path / "x.png")
    assert info.value.filename == str(tmp_path / "x.png")
    write_ok(True, tmp_path / "x.png")


# -- real permissions, as an unprivileged user ------------------------------------------------------
def _as_nobody(*argv: str, cwd: Path) -> tuple[int, str]:
    """``pebal ARGV`` in a forked child that runs as user nobody when we are root (the interpreter and
    its packages are already loaded: a fresh one may live in a folder nobody cannot read)."""
    import pebal_ros.demo  # noqa: F401 - every command module loaded before the privileges go
    import pebal_ros.infer  # noqa: F401
    import pebal_ros.replay.cli  # noqa: F401
    import pebal_ros.fleet.replay_cli  # noqa: F401 - what `pebal replay` runs

    # nobody's own cache folder: pebal refuses a cache folder of another user (root's)
    own_cache = tempfile.mkdtemp(prefix="pebal_nobody_cache_")
    if os.geteuid() == 0:
        os.chown(own_cache, 65534, 65534)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:      # child: never return into pytest
        code = 99
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            sys.stdout = open(os.devnull, "w")
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                os.environ["PEBAL_CACHE"] = own_cache
            os.chdir(cwd)
            code = main(list(argv))
        except BaseException:  # noqa: BLE001 - the parent sees the traceback and fails
            import traceback
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        err = fh.read()
    _, status = os.waitpid(pid, 0)
    shutil.rmtree(own_cache, ignore_errors=True)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def public_dir():
    """A folder every user may enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pebal_perm_"))
    path.chmod(0o777)
    yield path
    for p in path.rglob("*"):
        if p.is_dir():
            p.chmod(0o777)
    shutil.rmtree(path)


def test_demo_in_read_only_folder(public_dir: Path) -> None:
    ro = public_dir / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code, err = _as_nobody("demo", "--no-progress", cwd=ro)
    assert code == 1, err
    assert _one_line(err, "demo") == ("pebal demo: pebal_demo: permission denied (choose a folder you "
                                      "can read/write, or fix its permissions)")
    assert not (ro / "pebal_demo").exists()


def test_unwritable_out_and_input_in_a_locked_folder(public_dir: Path) -> None:
    image = public_dir / "ok.png"
    cv2.imwrite(str(image), np.zeros((16, 32, 3), np.uint8))
    locked = public_dir / "locked"
    locked.mkdir()
    write_recording(locked / "drive", [(np.zeros((8, 8, 3), np.uint8), None)], label_topic=None)
    locked.chmod(0o700)     # the owner's (root's, or ours when unprivileged): nobody else may enter
    ro_out = public_dir / "ro_out"
    ro_out.mkdir()
    ro_out.chmod(0o555)
    if os.geteuid() != 0:
        locked.chmod(0o000)
    for command, inp in (("infer", image), ("replay", public_dir / "nothing_here")):
        if command == "replay":
            write_recording(inp, [(np.zeros((8, 8, 3), np.uint8), None)], label_topic=None)
        code, err = _as_nobody(command, str(inp), "--out", str(ro_out), cwd=public_dir)
        assert code == 1, err
        assert f"{ro_out}: permission denied" in _one_line(err, command)
    # An input below a folder nobody may enter: named and skipped; the command ends cleanly.
    code, err = _as_nobody("replay", str(locked / "drive"), "--out", str(public_dir / "o"), cwd=public_dir)
    assert code == 2 and "Traceback" not in err
    assert f"{locked / 'drive'}: cannot be read: Permission denied" in err
    code, err = _as_nobody("infer", str(locked / "x.png"), str(image), "--out", str(public_dir / "o"),
                           "--model", str(public_dir / "missing.onnx"), cwd=public_dir)
    assert code == 2 and "Traceback" not in err, err
    assert f"{locked / 'x.png'}: cannot be read: Permission denied" in err
    # A folder of bags holding the locked one: reported, the readable bag is still found.
    from pebal_ros.replay.cli import expand_bags
    if os.geteuid() == 0:
        code, err = _as_nobody("replay", str(public_dir), "--out", str(public_dir / "o2"),
                               "--model", str(public_dir / "missing.onnx"), cwd=public_dir)
        assert f"{locked}: cannot look inside: Permission denied" in err and "Traceback" not in err
        assert "cannot load the model" in err      # it went on with the bag it could read
    else:
        bags, problems = expand_bags([public_dir])
        assert bags == [public_dir / "nothing_here"] and "cannot look inside" in problems[0]
