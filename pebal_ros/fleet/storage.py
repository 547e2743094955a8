"""Bags named by URI (``s3://bucket/fleet``, ``gs://...``, ``file:///...``): found and read through
pyarrow's file systems (``pyarrow.fs.FileSystem.from_uri``), the way Ray reaches object storage.

Discovery is the local one: the URI's tree is listed once and mirrored as empty files in a scratch
folder, and :func:`pebal_ros.replay.bag.find_bags` decides there (bag folders, split and crashed
recordings, loose storage files, 4 levels), so a bucket is searched by the same rules as a disk. A
worker copies one bag at a time to its node's scratch space (rosbag2's readers need files and
seek), replays it, and deletes the copy; the report names the URI. Results go to ``--out``, a path
every node sees.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .engine import FleetError


def is_uri(item: str | Path) -> bool:
    return isinstance(item, str) and "://" in item


def _pyarrow_fs() -> Any:
    try:
        import pyarrow.fs as pafs
    except ImportError as exc:
        raise FleetError(f"bags named by URI need pyarrow ({exc}); install it with pip install 'pebal_ros[ray]'") from None
    return pafs


def _join(uri: str, rel: str) -> str:
    parts = urlsplit(uri)
    path = parts.path.rstrip("/") + ("/" + rel if rel not in ("", ".") else "")
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, parts.fragment))


def find_uri_bags(uris: list[str]) -> tuple[list[str], list[str]]:
    """Bags in and below each URI (by :func:`find_bags`' rules), and the problems met."""
    from ..replay.bag import FIND_DEPTH, STORAGE_SUFFIXES, find_bags

    pafs = _pyarrow_fs()
    bags: list[str] = []
    problems: list[str] = []
    for uri in uris:
        try:
            fs, root = pafs.FileSystem.from_uri(uri)
            info = fs.get_file_info(root)
            if info.type == pafs.FileType.NotFound:
                problems.append(f"{uri}: does not exist")
                continue
            if info.type == pafs.FileType.File:
                bags.append(uri)
                continue
            listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
        except (OSError, ValueError) as exc:      # pyarrow's errors derive from these
            problems.append(f"{uri}: cannot be read: {str(exc).splitlines()[0]}")
            continue
        with tempfile.TemporaryDirectory(prefix="pebal_uri_") as tmp:
            skeleton = Path(tmp)
            for item in listing:
                rel = item.path[len(root.rstrip("/")):].lstrip("/")
                if not rel or rel.count("/") > FIND_DEPTH + 1:
                    continue
                target = skeleton / rel
                if item.type == pafs.FileType.Directory:
                    target.mkdir(parents=True, exist_ok=True)
                elif item.type == pafs.FileType.File:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.touch()
            found, trouble = find_bags(skeleton)
            problems.extend(t.replace(str(skeleton), uri) for t in trouble)
            if not found:
                problems.append(f"{uri}: holds no rosbag2 recording (no metadata.yaml, no "
                                f"{'/'.join(STORAGE_SUFFIXES)} file) up to {FIND_DEPTH} folder levels below it")
            bags.extend(_join(uri, f.relative_to(skeleton).as_posix()) for f in found)
    return bags, problems


def uri_names(bags: list[str]) -> list[str]:
    """Output sub-folders for URI bags, as local replay names path bags: the path below the folders
    they share, without storage suffixes, made unique."""
    from ..replay.bag import STORAGE_SUFFIXES

    paths = [PurePosixPath(urlsplit(b).netloc + urlsplit(b).path) for b in bags]
    common = PurePosixPath(os.path.commonpath([str(p.parent) for p in paths])) if paths else PurePosixPath("/")
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        rel = p.relative_to(common)
        stem = (rel.parent / rel.name.split(".")[0]).as_posix() if p.suffix in STORAGE_SUFFIXES else rel.as_posix()
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        out.append(stem if n == 0 else f"{stem}_{n}")
    return out


def stage(uri: str, into: Path) -> Path:
    """Copy the bag (a folder or one file) at ``uri`` into ``into``; returns the local copy."""
    pafs = _pyarrow_fs()
    fs, path = pafs.FileSystem.from_uri(uri)
    dest = into / (PurePosixPath(path).name or "bag")
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        dest.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(dest), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return dest
