"""The user cache is not trusted for being there (issue 17): a private folder, content-addressed
entries checked against their recorded SHA-256 before use, writes that never follow a symlink.

The attacks are real: graphs made with onnx, files planted where pebal looks, symbolic links where
it writes, `pebal infer` run as a subprocess on the bundled model. Permission checks read owner and
mode bits, so they hold when the tests run as root (CI); the cases that need a second user chown to
``nobody`` and run only as root.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from _hostile import blind_onnx

from pebal_ros import cache
from pebal_ros.calibration import file_sha256, find_calibration
from pebal_ros.graph.engine_cache import (EngineCache, EngineKey, StaleEngineError, sidecar_path, verify_engine,
                                          write_sidecar)
from pebal_ros.model_settings import resolve_settings
from pebal_ros.open_model import cached_onnx
from pebal_ros.paths import SYNTHETIC_MODEL_NAME, bundled_model
from pebal_ros.runtime.onnx import OnnxRuntime

ROOT = os.geteuid() == 0
NOBODY = 65534
needs_root = pytest.mark.skipif(not ROOT, reason="a file of another user can only be made by root")
# The small bundled model: these tests are about the cache, and its export takes seconds, not a minute.
# It has no calibration record beside it, so the cache is where its record would be looked for.
SYNTH = bundled_model(SYNTHETIC_MODEL_NAME)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# -- the folder ------------------------------------------------------------------------------------
def test_cache_folder_is_created_private(tmp_path: Path) -> None:
    folder = cache.cache_folder("onnx")
    assert folder == tmp_path / "cache" / "onnx"
    assert (folder.stat().st_mode & 0o777, folder.parent.stat().st_mode & 0o777) == (0o700, 0o700)


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770, 0o702])
def test_cache_folder_writable_by_others_is_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    root = tmp_path / "cache"
    root.mkdir()
    os.chmod(root, mode)
    with pytest.raises(cache.CacheError) as err:
        cache.cache_folder("onnx")
    msg = str(err.value)
    assert "\n" not in msg and str(root) in msg and "writable by other users" in msg
    assert f"chmod 700 {root}" in msg and "PEBAL_CACHE" in msg
    assert not (root / "onnx").exists()          # refused before anything was written


@needs_root
def test_cache_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(cache.CacheError, match=rf"belongs to uid {NOBODY}, not to you.*PEBAL_CACHE"):
        cache.cache_folder()


def test_cache_subfolder_symlink_is_refused_root_symlink_is_followed(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "disk" / "pebal"
    real.mkdir(parents=True, mode=0o700)
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("PEBAL_CACHE", str(tmp_path / "link"))      # ~/.cache on another disk: fine
    assert cache.cache_folder("onnx").resolve() == real / "onnx"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (real / "calibration").symlink_to(elsewhere)
    with pytest.raises(cache.CacheError, match="symbolic link"):
        cache.cache_folder("calibration")


# -- files -----------------------------------------------------------------------------------------
def test_open_verified_refuses_links_fifos_and_writable_files(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_bytes(b"data")
    os.chmod(good, 0o644)
    os.close(cache.open_verified(good))
    link = tmp_path / "link"
    link.symlink_to(good)
    with pytest.raises(cache.UntrustedFile, match="symbolic link"):
        cache.open_verified(link)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(cache.UntrustedFile, match="not a regular file"):   # and it did not block
        cache.open_verified(fifo)
    os.chmod(good, 0o666)
    with pytest.raises(cache.UntrustedFile, match="writable by other users"):
        cache.open_verified(good)
    if ROOT:
        os.chmod(good, 0o644)
        os.chown(good, NOBODY, NOBODY)
        with pytest.raises(cache.UntrustedFile, match=f"owned by uid {NOBODY}"):
            cache.open_verified(good)


def test_write_atomic_replaces_a_planted_symlink_never_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    target = tmp_path / "entry.json"
    target.symlink_to(victim)
    cache.write_atomic(target, b"new")
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["entry.json", "victim"]   # no temporary left


def test_file_sha256_is_the_content_digest_and_follows_changes(tmp_path: Path) -> None:
    import hashlib
    f = tmp_path / "m.pt"
    f.write_bytes(b"one")
    assert cache.file_sha256(f) == hashlib.sha256(b"one").hexdigest()
    f.write_bytes(b"two")                       # same path, new content: never the remembered digest
    assert cache.file_sha256(f) == hashlib.sha256(b"two").hexdigest()


# -- verified entries (a byte-string builder: the rules, without an export) ------------------------
def _build(data: bytes, log: list[bytes] | None = None):
    def build(path: Path) -> None:
        path.write_bytes(data)
        if log is not None:
            log.append(data)
    return build


def test_entry_is_built_once_then_verified(capsys) -> None:
    key = {"source_sha256": "a" * 64, "size": [1, 2]}
    built: list[bytes] = []
    first = cache.get_or_build("t", key, "model_1x2", ".bin", _build(b"graph", built))
    again = cache.get_or_build("t", key, "model_1x2", ".bin", _build(b"other", built))
    assert first == again and first.read_bytes() == b"graph" and built == [b"graph"]
    manifest = json.loads((first.parent / f"{cache.key_digest(key)}.json").read_text())
    assert manifest["key"] == key and manifest["file"] == first.name and manifest["size"] == 5
    assert re.fullmatch(r"model_1x2\.[0-9a-f]{16}\.bin", first.name)
    assert cache.get_or_build("t", {**key, "size": [2, 2]}, "m", ".bin", _build(b"g2", built)) != first
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("attack", ["replace content", "truncate", "symlink to a copy", "forge manifest key",
                                    "manifest symlink", "manifest names another file"])
def test_tampered_entry_is_rebuilt_and_said_once(attack: str, tmp_path: Path, capsys) -> None:
    key = {"source_sha256": "b" * 64}
    entry = cache.get_or_build("t", key, "m", ".bin", _build(b"honest graph"))
    manifest = entry.parent / f"{cache.key_digest(key)}.json"
    copy = tmp_path / "copy.bin"
    copy.write_bytes(b"honest graph")
    if attack == "replace content":
        entry.write_bytes(b"planted graph")
    elif attack == "truncate":
        entry.write_bytes(b"honest")
    elif attack == "symlink to a copy":      # even identical bytes are not followed through a link
        entry.unlink()
        entry.symlink_to(copy)
    elif attack == "forge manifest key":
        meta = json.loads(manifest.read_text())
        meta["key"] = {"source_sha256": "c" * 64}
        manifest.write_text(json.dumps(meta))
    elif attack == "manifest symlink":
        fake = tmp_path / "fake.json"
        fake.write_text(manifest.read_text())
        manifest.unlink()
        manifest.symlink_to(fake)
    else:
        meta = json.loads(manifest.read_text())
        meta["file"] = "../../escape.bin"
        manifest.write_text(json.dumps(meta))
    assert cache.lookup("t", key) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pebal: ") and "rebuilding it" in err[0]
    built: list[bytes] = []
    rebuilt = cache.get_or_build("t", key, "m", ".bin", _build(b"honest graph", built))
    assert built == [b"honest graph"] and rebuilt.read_bytes() == b"honest graph" and not rebuilt.is_symlink()
    assert copy.read_bytes() == b"honest graph"                    # a link's target is never touched
    assert capsys.readouterr().err == ""                           # said once, not again on rebuild


def _build_counted(args: tuple[str, str]) -> str:
    cache_root, log = args
    os.environ["PEBAL_CACHE"] = cache_root

    def build(path: Path) -> None:
        with open(log, "a") as fh:
            fh.write("built\n")
        path.write_bytes(b"graph")
    return str(cache.get_or_build("t", {"k": 1}, "m", ".bin", build))


def test_concurrent_processes_build_an_entry_once(tmp_path: Path) -> None:
    log = tmp_path / "builds.log"
    with mp.get_context("fork").Pool(4) as pool:
        paths = pool.map(_build_counted, [(str(tmp_path / "cache"), str(log))] * 8)
    assert len(set(paths)) == 1 and log.read_text() == "built\n"


# -- the bundled model, exported for real --------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A cache holding the bundled model's real export, made once (each test copies it)."""
    root = tmp_path_factory.mktemp("template") / "cache"
    old = os.environ.get("PEBAL_CACHE")
    os.environ["PEBAL_CACHE"] = str(root)
    try:
        cached_onnx(resolve_settings(SYNTH, runtime="onnxruntime"), quiet=True)
    finally:
        if old is None:
            os.environ.pop("PEBAL_CACHE")
        else:
            os.environ["PEBAL_CACHE"] = old
    return root


def _copy(template: Path, to: Path) -> Path:
    shutil.copytree(template, to, symlinks=True)
    return to


@pytest.fixture
def street(tmp_path: Path) -> Path:
    """A synthetic street frame with an object on the road (the bundled model flags part of it)."""
    from pebal_ros.data.synthetic_scene import drive_sequence
    frame = next(iter(drive_sequence(0, 1, (256, 128))))
    path = tmp_path / "street.png"
    cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
    return path


def _infer(image: Path, out: Path, cache_root: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEBAL_CACHE": str(cache_root)}
    return subprocess.run([sys.executable, "-m", "pebal_ros.cli", "infer", str(image), "--model", str(SYNTH), "--runtime", "onnxruntime", "--out", str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=900)


def _anomalous(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stdout.splitlines() if "% anomalous" in ln]
    assert proc.returncode == 0 and len(lines) == 1, proc.stdout + proc.stderr
    return lines[0].split(": ", 1)[1]


def test_planted_onnx_in_the_cache_is_rebuilt_not_run(exported: Path, street: Path, tmp_path: Path) -> None:
    honest = _anomalous(_infer(street, tmp_path / "o1", _copy(exported, tmp_path / "c1")))
    assert not honest.startswith("0.00 %")
    # the attacker replaces the cached graph by one that flags nothing, keeping its name and times
    planted = _copy(exported, tmp_path / "c2")
    graphs = list(planted.rglob("*.onnx"))
    assert graphs
    for g in graphs:
        st = g.stat()
        blind_onnx(g)
        os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns))
    proc = _infer(street, tmp_path / "o2", planted)
    assert _anomalous(proc) == honest, proc.stderr
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("pebal: ")]
    assert len(said) == 1 and "does not match its manifest" in said[0] and "rebuilding" in said[0], proc.stderr
    assert "exporting pebal_synthetic_espnetv2.pt" in proc.stdout


def test_world_writable_cache_is_refused_by_pebal_infer(exported: Path, street: Path, tmp_path: Path) -> None:
    shared = _copy(exported, tmp_path / "shared")
    os.chmod(shared, 0o1777)          # a shared /tmp-style folder: anyone can plant files in it
    proc = _infer(street, tmp_path / "o", shared)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pebal infer: the cache folder") and f"chmod 700 {shared}" in last, proc.stderr
    assert not (tmp_path / "o").exists()


def test_same_model_in_three_places_is_exported_once(exported: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """A clone, a pip prefix and a colcon install tree each hold the bundled model: one export."""
    monkeypatch.setenv("PEBAL_CACHE", str(_copy(exported, tmp_path / "cache3")))
    places = [SYNTH]
    for prefix in ("pip_prefix", "colcon_install"):
        folder = tmp_path / prefix / "share" / "pebal_ros" / "models"
        folder.mkdir(parents=True)
        shutil.copyfile(places[0], folder / places[0].name)      # a fresh copy: its own path, inode and mtime
        places.append(folder / places[0].name)
    monkeypatch.setenv("AMENT_PREFIX_PATH", os.pathsep.join(str(tmp_path / p) for p in ("colcon_install", "pip_prefix")))
    paths = []
    for model in places:
        settings = resolve_settings(model, runtime="onnxruntime")
        assert settings.info.bundled_preset == "synthetic"           # each is the bundled model where it lies
        paths.append(cached_onnx(settings))
    assert len(set(paths)) == 1, paths
    assert "exporting" not in capsys.readouterr().out               # the template's one export serves all
    assert len(list((tmp_path / "cache3" / "onnx").glob("*.onnx"))) == 1


def test_symlinks_where_the_export_writes_are_never_followed(exported: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared-cache attack: links at the names the exporter writes, pointing at a file of the victim."""
    root = _copy(exported, tmp_path / "cache4")
    monkeypatch.setenv("PEBAL_CACHE", str(root))
    victim = tmp_path / "etc_shadow"
    victim.write_text("root-owned file\n")
    for entry in root.joinpath("onnx").glob("*.onnx"):
        entry.unlink()
        for name in (entry.name, entry.with_suffix(f".{os.getpid()}.tmp.onnx").name):   # final and temporary
            (entry.parent / name).symlink_to(victim)
    path = cached_onnx(resolve_settings(SYNTH, runtime="onnxruntime"), quiet=True)
    assert victim.read_text() == "root-owned file\n"
    assert path.is_file() and not path.is_symlink()
    OnnxRuntime(path, device="cpu").infer(np.zeros((128, 256, 3), np.uint8), -3.7)


# -- calibration records in the cache --------------------------------------------------------------
def _record(threshold: float, sha: str) -> str:
    return f"threshold: {threshold}\ntarget: pixel_fpr\ntarget_value: 0.001\nmodel_sha256: {sha}\n"


def test_planted_calibration_record_is_not_applied(tmp_path: Path) -> None:
    model = SYNTH
    sha = file_sha256(model)
    folder = cache.cache_folder("calibration")
    (folder / f"{sha}.yaml").write_text(_record(1.0e30, sha))       # "calibrated" to never alarm
    s = resolve_settings(SYNTH, runtime="onnxruntime")
    assert s.threshold == pytest.approx(-3.73, abs=0.01) and "calibration file" not in s.source("threshold")
    assert any(f"{sha}.yaml" in w and "between -1e+06 and 1e+06" in w for w in s.warnings), s.warnings


def test_calibration_record_through_a_symlink_is_ignored(tmp_path: Path) -> None:
    sha = file_sha256(SYNTH)
    elsewhere = tmp_path / "planted.yaml"
    elsewhere.write_text(_record(-100.0, sha))
    (cache.cache_folder("calibration") / f"{sha}.yaml").symlink_to(elsewhere)
    cal, where, reason = find_calibration(SYNTH)
    assert cal is None and "symbolic link" in reason and "\n" not in reason


@needs_root
def test_calibration_record_of_another_user_is_ignored(tmp_path: Path) -> None:
    sha = file_sha256(SYNTH)
    record = cache.cache_folder("calibration") / f"{sha}.yaml"
    record.write_text(_record(-100.0, sha))
    os.chown(record, NOBODY, NOBODY)
    cal, _, reason = find_calibration(SYNTH)
    assert cal is None and f"owned by uid {NOBODY}" in reason


def test_world_writable_cache_refuses_calibration_lookup(tmp_path: Path) -> None:
    cache.cache_folder("calibration")
    os.chmod(tmp_path / "cache", 0o777)
    with pytest.raises(cache.CacheError, match="writable by other users"):
        resolve_settings(SYNTH, runtime="onnxruntime")


# -- TensorRT engine caches: the same rules --------------------------------------------------------
def _key(**kw) -> EngineKey:
    base = dict(onnx_sha256="a" * 64, tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                precision="fp16", shapes="image:512x1024x3")
    return EngineKey(**{**base, **kw})


def test_engine_cache_refuses_a_shared_folder(tmp_path: Path) -> None:
    folder = tmp_path / "engines"
    folder.mkdir()
    os.chmod(folder, 0o777)
    with pytest.raises(cache.CacheError, match="engine cache folder .* writable by other users"):
        EngineCache(folder)


def test_engine_cache_checks_the_engine_against_its_sidecar(tmp_path: Path, capsys) -> None:
    engines = EngineCache(tmp_path / "engines")
    k = _key()
    path = engines.path_for(k)
    path.write_bytes(b"serialized engine")
    write_sidecar(path, k)
    assert engines.lookup(k) == path
    path.write_bytes(b"swapped engine!!!")                         # same key, other bytes
    assert engines.lookup(k) is None and "not the one its sidecar describes" in capsys.readouterr().err
    path.write_bytes(b"serialized engine")
    real = tmp_path / "side.json"
    real.write_text(sidecar_path(path).read_text())
    sidecar_path(path).unlink()
    sidecar_path(path).symlink_to(real)
    assert engines.lookup(k) is None and "symbolic link" in capsys.readouterr().err
    # an engine given by path (the runtime's check): its recorded digest is checked too
    side = tmp_path / "m.engine"
    side.write_bytes(b"engine")
    write_sidecar(side, k)
    verify_engine(side, "10.3.0", "Orin", "8.7")
    side.write_bytes(b"engin")
    with pytest.raises(StaleEngineError, match="truncated, corrupted or replaced"):
        verify_engine(side, "10.3.0", "Orin", "8.7")
