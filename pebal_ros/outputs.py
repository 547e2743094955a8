"""Output folders, created and proven writable before a command starts its long work.

Why a probe file: ``os.access`` answers "yes" for root even on a read-only mount, ``mkdir(exist_ok=True)``
succeeds on an existing folder nobody may write to, and ``cv2.imwrite`` only returns False. A command
that loads a model for half a minute and then cannot write a single file is the failure this prevents.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def writable_folder(path: str | Path) -> Path:
    """``path`` created (with parents) and known to accept a new file; raises OSError with
    ``filename`` set to the folder otherwise (pebal_ros.cli turns it into one line)."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".pebal_write_check_"):
            pass
    except OSError as exc:
        if exc.filename is None or ".pebal_write_check_" in str(exc.filename):
            exc.filename = str(folder)      # the folder is what the user named and must change
        raise
    return folder


def write_ok(written: bool, path: str | Path) -> None:
    """Turn cv2.imwrite's silent ``False`` into an error that names the file."""
    if not written:
        raise OSError(None, "could not be written (cv2.imwrite failed: disk full, or the folder "
                      "was removed or made read-only?)", str(path))
