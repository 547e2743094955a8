"""When a bag's result is complete, and how a finished bag is committed under OUT.

A worker replays a bag into a temporary folder ``OUT/.fleet_partial/<bag>-<attempt>/`` and writes its
record, ``fleet.json``, there last. The driver then moves the results into the bag's own output
folder (the one a local replay writes: ``OUT/<name>/`` or OUT itself for a single bag) and moves
``fleet.json`` last. So ``fleet.json`` is the done marker: a folder without it, or whose files do
not match the sizes it lists, is not complete, and ``--resume`` replays that bag again.

:func:`bag_complete` is the one place that decides; it is what to re-point when the replay itself
gets its own completeness marker.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..output_folder import write_atomic

MARKER = "fleet.json"
FORMAT = "pebal-fleet-bag/1"
PARTIAL = ".fleet_partial"          # under OUT: attempts in progress (removed when the run ends)
# What a bag's output folder holds (and a commit replaces); everything else in it is left alone.
RESULT_ENTRIES = ("result_bag", "report", "ground_truth.npz", MARKER)


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sizes(folder: Path) -> dict[str, int]:
    """Every result file below ``folder`` (relative path -> size), the marker excepted."""
    out = {}
    for entry in RESULT_ENTRIES[:-1]:
        top = folder / entry
        for p in ([top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []):
            if p.is_file():
                out[p.relative_to(folder).as_posix()] = p.stat().st_size
    return out


def read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def bag_complete(out_dir: str | Path) -> dict[str, Any] | None:
    """The bag's record when ``out_dir`` holds a finished bag (its marker, and every file the marker
    lists with the size it lists); else None."""
    out_dir = Path(out_dir)
    record = read_marker(out_dir)
    if record is None:
        return None
    for rel, size in (record.get("files") or {}).items():
        try:
            if (out_dir / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return record


def leftovers(out_dir: Path) -> list[str]:
    """Result entries already in ``out_dir`` (from an earlier, maybe unfinished, run)."""
    return [e for e in RESULT_ENTRIES if (out_dir / e).exists()]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def commit(tmp: Path, out_dir: Path) -> None:
    """Move a finished attempt's results into the bag's output folder, the marker last (old result
    entries there are replaced: they belonged to an unfinished or overwritten run)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove(out_dir / MARKER)          # first: from here until the end the folder is not complete
    for entry in RESULT_ENTRIES[:-1]:
        _remove(out_dir / entry)
        if (tmp / entry).exists():
            os.replace(tmp / entry, out_dir / entry)
    os.replace(tmp / MARKER, out_dir / MARKER)
    shutil.rmtree(tmp, ignore_errors=True)


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
