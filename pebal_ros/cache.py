"""The user cache folder, used only while it is private, and its verified, content-addressed entries.

What lands in the cache (the ONNX export of a checkpoint, calibration records of read-only models,
TensorRT engines) decides what the detector reports, so nothing in it is trusted for being there:

- The folder (:func:`pebal_ros.paths.cache_dir`) must belong to the user running pebal and must not
  be writable by group or others; otherwise every command refuses it in one line naming the folder
  and the fix. Whoever can write the folder can plant anything, and no check of the files can
  undo that. The checks read owner and mode bits, so they hold for root too.
- An entry is found by a key, the SHA-256 of what it was made from (the source model's SHA-256,
  never its path, and every setting that changes the result): the same model installed in a
  clone, a pip prefix and a colcon install tree is one entry. The key names a small manifest
  (``<kind>/<key>.json``) that records the entry's file and its SHA-256; the file is named by its
  own digest. Before use the manifest and the file are opened without following symbolic links,
  must be regular files of this user not writable by others, and the file must hash to the
  manifest's digest. Anything else is rebuilt, and said once on stderr.
- Writes never use a predictable name: a producer writes into a private staging folder made with
  ``mkdtemp`` inside the target folder (its name random, its mode 0700, so nothing can be planted
  or linked there), the result is fsynced and moved into place with ``os.replace`` (which replaces
  a symbolic link, never writes through it), and the manifest is written last, the same way.
  Concurrent processes building the same entry wait for each other (``flock``), so it is built once.

Hashing a model costs about 1 ms for the bundled 1.1 MB checkpoint and 0.75 s for a 300 MB file on
the development machine (``bench/bench_cache_hash.py``); a digest is remembered per process for an
unchanged file (same device, inode, size, mtime and ctime), never across processes.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .paths import cache_dir

MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
_MANIFEST_BYTES = 64 * 1024
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class CacheError(RuntimeError):
    """A cache folder pebal must not use (writable by others, someone else's, not a folder); one line."""


class UntrustedFile(OSError):
    """A file in a private folder that is not a regular file of this user (a symlink, a FIFO, ...)."""


# -- folders ---------------------------------------------------------------------------------------
def _folder_problem(path: Path, st: os.stat_result, what: str) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return f"the {what} {path} is not a folder; set PEBAL_CACHE to a folder of your own"
    if st.st_uid != os.geteuid():
        return (f"the {what} {path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()}): whoever owns "
                f"it can plant models there; set PEBAL_CACHE to a folder of your own")
    if st.st_mode & 0o022:
        return (f"the {what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}): anyone could "
                f"plant a model there; run `chmod 700 {path}` or set PEBAL_CACHE to a private folder")
    return None


def check_folder(path: str | os.PathLike, create: bool = True, what: str = "cache folder") -> Path:
    """``path`` as a private folder (created 0700 if missing): owned by this user, not writable by
    group or others. Raises CacheError (one line naming the folder and the fix) otherwise.

    The folder itself may be reached through a symbolic link (``~/.cache`` on another disk); the
    folder it leads to is what is checked."""
    path = Path(path).expanduser()
    if create:
        os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    problem = _folder_problem(path, st, what)
    if problem:
        raise CacheError(problem)
    return path


def cache_folder(sub: str | None = None, create: bool = True) -> Path:
    """The checked user cache folder, or its sub-folder ``sub`` (created 0700; never a symlink).
    ``create=False``: raises FileNotFoundError where a folder does not exist yet (nothing cached)."""
    root = check_folder(cache_dir(), create)
    if not sub:
        return root
    folder = root / sub
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        raise CacheError(f"{folder} in the cache folder is a symbolic link; remove it (pebal recreates the folder)")
    problem = _folder_problem(folder, st, "cache folder")
    if problem:
        raise CacheError(problem)
    return folder


# -- files -----------------------------------------------------------------------------------------
def open_verified(path: str | os.PathLike) -> int:
    """A read-only descriptor of ``path``, a regular file of this user not writable by others.

    Never follows a symbolic link and never blocks on a FIFO. Raises FileNotFoundError or
    UntrustedFile (saying what the path is instead)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UntrustedFile(errno.ELOOP, "a symbolic link (never followed in the cache)", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFile(errno.EINVAL, "not a regular file", str(path))
        if st.st_uid != os.geteuid():
            raise UntrustedFile(errno.EPERM, f"owned by uid {st.st_uid}, not by you", str(path))
        if st.st_mode & 0o022:
            raise UntrustedFile(errno.EPERM, f"writable by other users (mode {stat.S_IMODE(st.st_mode):o})", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_verified(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The content of a verified file (:func:`open_verified`), at most ``max_bytes``."""
    fd = open_verified(path)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UntrustedFile(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return data


def sha256_fd(fd: int) -> str:
    h = hashlib.sha256()
    while block := os.read(fd, _CHUNK):
        h.update(block)
    return h.hexdigest()


_DIGESTS: dict[tuple[int, ...], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, remembered in this process while the file is unchanged."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        digest = _DIGESTS.get(ident)
        if digest is None:
            digest = _DIGESTS[ident] = sha256_fd(fh.fileno())
    return digest


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o600) -> Path:
    """Write ``data`` to ``path`` through a fresh ``mkstemp`` file in the same folder, fsynced and
    moved into place: readers see the old file or the whole new one, and a symbolic link planted
    at ``path`` is replaced, never written through."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def staging_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """A private (0700, random name) folder inside ``folder`` for a producer that writes by path;
    removed afterwards."""
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_SAID: set[str] = set()


def say_once(message: str) -> None:
    """A cache event the user should know about (a rebuilt entry), on stderr once per process."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"pebal: {message}", file=sys.stderr, flush=True)


# -- verified entries ------------------------------------------------------------------------------
def key_digest(material: dict[str, Any]) -> str:
    """The entry key: SHA-256 of the canonical JSON of what the entry is made from."""
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _canonical(material: dict[str, Any]) -> Any:
    return json.loads(json.dumps(material, sort_keys=True))


def lookup(kind: str, material: dict[str, Any]) -> Path | None:
    """The verified entry for ``material`` in ``<cache>/<kind>``, or None (absent, or failed
    verification: said once, and the caller rebuilds it)."""
    try:
        folder = cache_folder(kind, create=False)
    except FileNotFoundError:
        return None
    manifest = folder / f"{key_digest(material)}.json"
    try:
        meta = json.loads(read_verified(manifest, _MANIFEST_BYTES))
    except FileNotFoundError:
        return None
    except UntrustedFile as exc:
        return _reject(manifest, None, f"the cache manifest {manifest} is {exc.strerror}")
    except (OSError, ValueError) as exc:
        return _reject(manifest, None, f"the cache manifest {manifest} is unreadable ({exc})")
    if not (isinstance(meta, dict) and meta.get("format") == MANIFEST_FORMAT
            and meta.get("key") == _canonical(material) and isinstance(meta.get("file"), str)
            and _SAFE_NAME.fullmatch(meta["file"]) and isinstance(meta.get("sha256"), str)
            and _HEX64.fullmatch(meta["sha256"])):
        return _reject(manifest, None, f"the cache manifest {manifest} does not describe this entry")
    entry = folder / meta["file"]
    try:
        fd = open_verified(entry)
    except FileNotFoundError:
        return _reject(manifest, None, f"the cache entry {entry} is missing")
    except UntrustedFile as exc:
        return _reject(manifest, entry, f"the cache entry {entry} is {exc.strerror}")
    try:
        digest = sha256_fd(fd)
    finally:
        os.close(fd)
    if digest != meta["sha256"]:
        return _reject(manifest, entry, f"the cache entry {entry} does not match its manifest (sha256 "
                                        f"{digest[:12]}…, recorded {meta['sha256'][:12]}…)")
    return entry


def _reject(manifest: Path, entry: Path | None, why: str) -> Path | None:
    """Say why an entry is not used, once, and remove it (manifest and file) so it is rebuilt."""
    say_once(f"{why}: not used; rebuilding it")
    for path in (manifest, entry):
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)          # unlink removes a symbolic link itself, never its target
    return None                          # "no entry": lookup returns this


@contextlib.contextmanager
def _building(folder: Path, key: str) -> Iterator[None]:
    """One builder per entry at a time across processes (the others wait, then find it built)."""
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def get_or_build(kind: str, material: dict[str, Any], label: str, suffix: str,
                 build: Callable[[Path], None], announce: Callable[[], None] | None = None) -> Path:
    """The verified entry for ``material``, built by ``build(path)`` (which writes the file at
    ``path``) when there is none; ``announce`` is called before a build."""
    found = lookup(kind, material)
    if found is not None:
        return found
    folder = cache_folder(kind)
    key = key_digest(material)
    with _building(folder, key):
        found = lookup(kind, material)      # another process may have built it while we waited
        if found is not None:
            return found
        if announce is not None:
            announce()
        with staging_folder(folder) as tmp:
            out = tmp / f"entry{suffix}"
            build(out)
            fd = open_verified(out)
            try:
                digest = sha256_fd(fd)
                os.fchmod(fd, 0o600)
                os.fsync(fd)
            finally:
                os.close(fd)
            name = f"{re.sub(r'[^A-Za-z0-9_-]', '_', label)[:80]}.{digest[:16]}{suffix}"
            entry = folder / name
            os.replace(out, entry)
        from . import __version__
        manifest = {"format": MANIFEST_FORMAT, "file": name, "sha256": digest, "size": entry.stat().st_size,
                    "key": _canonical(material), "pebal_ros": __version__}
        write_atomic(folder / f"{key}.json", (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return entry
