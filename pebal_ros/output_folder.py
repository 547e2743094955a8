"""An output folder that one run owns, and whose results appear only when they are complete.

Two things go wrong without this. Two runs into the same folder (``pebal replay --overwrite`` twice,
or a fleet job re-submitted while the first copy still runs) both finish "successfully" while one
deletes or overwrites the other's files. And a run whose disk fills up leaves a 0-byte report or
half a result bag beside a summary that was written earlier and says everything is fine.

:func:`folder_lock` holds an exclusive ``flock`` on ``<folder>/.pebal.lock`` for the whole run; a
second run gets :class:`FolderBusy` ("--out X is in use by pid N") at once. The kernel drops the
lock when the holder exits, however it exits, so a killed run never leaves a stale lock behind.
Within one process the lock is re-entrant for the thread that holds it (the CLI locks ``--out``
and then ``replay_bag`` locks the same folder).

:class:`OutputFolder` adds staging: each part (``result_bag``, ``report``) is written under a
temporary name in the same folder (``.report.partial-<pid>``) and moved into place by
:meth:`OutputFolder.commit` (a rename, atomic on one filesystem). A run that fails leaves no
staged file behind; what it still manages to say about the failure it commits explicitly.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

LOCK_NAME = ".pebal.lock"
_STAGE = ".partial-"      # staging folders and temporary files start or contain this


class FolderBusy(RuntimeError):
    """Another run (another process, or another thread of this one) owns the folder."""


_held: dict[str, list] = {}          # real path -> [fd, depth, owning thread id]
_held_guard = threading.Lock()


class folder_lock:  # noqa: N801 - used as a context manager, like open()
    """Exclusive ownership of ``folder`` (created if needed) for the duration of a ``with`` block.

    ``flag`` names the folder in the error the way the user gave it (``--out``)."""

    def __init__(self, folder: str | Path, flag: str = "--out") -> None:
        self.folder, self.flag = Path(folder), flag
        self._key = ""

    def __enter__(self) -> "folder_lock":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._key = os.path.realpath(self.folder)
        me = threading.get_ident()
        with _held_guard:
            held = _held.get(self._key)
            if held is not None:
                if held[2] != me:
                    raise FolderBusy(f"{self.flag} {self.folder} is in use by another thread of this "
                                     f"process (pid {os.getpid()})")
                held[1] += 1
                return self
            path = self.folder / LOCK_NAME
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                owner = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise FolderBusy(f"{self.flag} {self.folder} is in use by "
                                     f"{f'pid {owner}' if owner else 'another process'}") from None
                raise
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[self._key] = [fd, 1, me]
        return self

    def __exit__(self, *exc: object) -> None:
        with _held_guard:
            held = _held[self._key]
            held[1] -= 1
            if held[1] == 0:
                del _held[self._key]
                os.close(held[0])        # closing the descriptor releases the flock


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class OutputFolder:
    """``folder`` locked, with ``parts`` (sub-folder names) staged and committed as a whole.

    ``overwrite=False`` refuses a folder that already holds one of the parts. Use as a context
    manager: ``stage(part)`` is where to write a part now; ``commit()`` moves every staged part
    into place (replacing the old one) and removes the old copies of parts that were not staged,
    so the folder never mixes a new report with an old result. Leaving the block without a
    commit removes everything staged and keeps what was there before."""

    def __init__(self, folder: str | Path, parts: Sequence[str], overwrite: bool = False,
                 flag: str = "--out") -> None:
        self.folder, self.parts, self.overwrite = Path(folder), tuple(parts), overwrite
        self._lock = folder_lock(self.folder, flag)
        self._staged: dict[str, Path] = {}
        self.committed = False

    def __enter__(self) -> "OutputFolder":
        self._lock.__enter__()
        try:
            if not self.overwrite:
                for part in self.parts:
                    if (self.folder / part).exists():
                        raise FileExistsError(errno.EEXIST, "exists already; pass --overwrite or "
                                              "choose another --out", str(self.folder / part))
            # Staged parts of a run that was killed: nobody else holds the lock, so they are stale.
            for old in self.folder.glob(f"{_STAGE}*"):
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def final(self, part: str) -> Path:
        return self.folder / part

    @property
    def staging(self) -> Path:
        """Where parts are staged: ``.partial-<pid>/<part>``, so each keeps its own name (rosbags
        names the storage file after its folder) and one rename moves it into place."""
        return self.folder / f"{_STAGE}{os.getpid()}"

    def stage(self, part: str, fresh: bool = False) -> Path:
        """The staging path of ``part`` (not created: a writer may want to create it itself);
        ``fresh`` removes what was staged there so far."""
        path = self._staged.get(part)
        if path is None:
            self.staging.mkdir(exist_ok=True)
            path = self._staged[part] = self.staging / part
        if fresh and path.exists():
            shutil.rmtree(path)
        return path

    def public(self, text: str) -> str:
        """``text`` (an error message) with staging paths replaced by the final ones."""
        for part, path in self._staged.items():
            text = text.replace(str(path), str(self.final(part)))
        return text

    def discard(self, part: str) -> None:
        """Drop what was staged for ``part``; commit() then removes the old copy too."""
        path = self._staged.pop(part, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self) -> None:
        for part in self.parts:
            final = self.final(part)
            staged = self._staged.get(part)
            if staged is not None and not staged.exists():
                staged = None
            if final.exists() or final.is_symlink():
                # Moved out of the way first: the new part appears whole, never into a half-deleted one.
                trash = self.staging / f"old-{part}"
                self.staging.mkdir(exist_ok=True)
                os.replace(final, trash)
            if staged is not None:
                os.replace(staged, final)
        self._staged.clear()
        shutil.rmtree(self.staging, ignore_errors=True)
        self.committed = True

    def __exit__(self, *exc: object) -> None:
        try:
            if self.staging.exists():
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            self._lock.__exit__(None, None, None)


def write_file(path: str | Path, data: bytes | str, name: str | Path | None = None) -> Path:
    """``data`` written to ``path``; a failure is an OSError whose ``filename`` is ``name`` (default
    ``path``): Python names the file when open() fails but not when write() or close() does
    (EFBIG, ENOSPC), and the user must learn which output could not be written."""
    path = Path(path)
    try:
        with open(path, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as exc:
        exc.filename = str(name if name is not None else path)
        raise
    return path


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """``data`` written to ``path`` under a temporary name first, then renamed: a reader never
    sees a half-written file, and a failed write (disk full) leaves the old file as it was."""
    from .cache import write_atomic as _write_atomic   # mkstemp + fsync + rename: the one implementation

    try:
        return _write_atomic(path, data.encode("utf-8") if isinstance(data, str) else data, mode=0o644)
    except OSError as exc:
        exc.filename = str(path)
        raise


__all__ = ["FolderBusy", "LOCK_NAME", "OutputFolder", "folder_lock", "write_atomic", "write_file"]
