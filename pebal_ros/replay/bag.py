"""Read and write rosbag2 recordings (MCAP and sqlite3) without a ROS 2 install.

Reading goes through the storage-level readers of the ``rosbags`` library, one storage file at a
time, and not through ``rosbags.rosbag2.Reader``. Why: the high-level reader (0.11.9) matches each
topic of ``metadata.yaml`` to the topic of a storage file by comparing *everything* including the
offered QoS profiles. ROS 2 Foxy/Galactic wrote "infinite" deadline/lifespan/lease as ``0``/``0`` in
``metadata.yaml`` but as ``2147483647``/``4294967295`` in the storage file's own topic table, so no
topic matches and ``Reader.messages()`` silently yields nothing (the talker bags of rosbag2's own test
suite hold 20 messages and give 0). QoS does not matter for decoding, so here metadata topics are
matched to storage topics by name and type only, and every storage file is read in full.

Where ``rosbags`` cannot open a file at all (an MCAP file cut short by a crash has no footer and no
summary; a damaged sqlite3 database) the reader falls back to the ``mcap`` library's sequential
stream reader or to plain ``sqlite3``, reads whatever is intact, and records where reading broke in
:attr:`BagReader.issues`. Nothing is dropped silently: the caller compares what was read with the
counts the metadata declares.
"""
from __future__ import annotations

import heapq
import sqlite3
import tempfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

try:  # Python >= 3.14 has it in the standard library; rosbags depends on the backport before that.
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd  # type: ignore[no-redef]

from rosbags.rosbag2.storage_mcap import McapReader as _RosbagsMcap
from rosbags.rosbag2.storage_mcap import msgsrc as _msgsrc
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader as _RosbagsSqlite
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from .. import safe_yaml

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# One message decompressed to more than this is damage or a bomb (a 7680x4320 rgb8 frame is 100 MB).
MAX_MESSAGE_BYTES = 1 << 30


def _unzstd(data: bytes) -> bytes:
    """One zstd-compressed message payload, refusing to expand past MAX_MESSAGE_BYTES."""
    dec = zstd.ZstdDecompressor()
    out = dec.decompress(data, max_length=MAX_MESSAGE_BYTES)
    if not dec.eof:
        raise ValueError(f"more than {MAX_MESSAGE_BYTES:,} bytes when decompressed" if
                         len(out) >= MAX_MESSAGE_BYTES else "the compressed data ends early")
    return out


class BagError(Exception):
    """The input cannot be read as a rosbag2 recording; the message says why, for the user."""


class BagWriteError(BagError):
    """Writing a bag failed (disk full, folder gone): the message names the file and the reason."""


@dataclass
class TopicInfo:
    name: str
    msgtype: str
    declared: int | None = None     # message count the metadata promises (None: not declared)
    msgdef: str = ""                # ros2msg definition found in the bag, "" when the bag has none
    read: int = 0                   # messages actually read so far


@dataclass
class RawMessage:
    topic: str
    msgtype: str
    timestamp: int                  # receive time in ns, as the bag stores it
    data: bytes                     # CDR, already decompressed


@dataclass
class ReadIssue:
    file: str
    messages_before: int            # messages read from this file before it broke
    offset: int | None              # byte offset where reading stopped (MCAP), if known
    reason: str

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.file}{where}: {self.reason}"


def normalize_type(msgtype: str) -> str:
    """'sensor_msgs/Image' -> 'sensor_msgs/msg/Image' (old bags and users omit the 'msg')."""
    parts = msgtype.split("/")
    return f"{parts[0]}/msg/{parts[1]}" if len(parts) == 2 else msgtype


def _storage_kind(path: Path) -> str | None:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] == ".zstd":
        suffixes = suffixes[:-1]
    return STORAGE_SUFFIXES.get(suffixes[-1]) if suffixes else None


def _stream_break(exc: Exception) -> str:
    """Why sequential MCAP reading stopped, in words (mcap's EndOfFile carries no message)."""
    from mcap.exceptions import EndOfFile

    if isinstance(exc, EndOfFile):
        return "the file ends in the middle of a record (truncated, e.g. the recorder was killed)"
    return f"hit {type(exc).__name__}: {str(exc) or 'no details given'}"


def _salvage_chunk(tail: bytes) -> list[Any]:
    """Schema/Channel/Message records in the intact front of an MCAP chunk cut short.

    A recorder that is killed leaves its last chunk half written (rosbag2 closes chunks every ~768 KiB,
    so this is up to seconds of data). Uncompressed chunk data and zstd streams decode up to the cut,
    so every inner record that lies completely before it is recovered. ``tail`` starts at the chunk's
    opcode; anything that is not a chunk gives nothing.
    """
    import struct
    from io import BytesIO

    from mcap.data_stream import ReadDataStream
    from mcap.opcode import Opcode
    from mcap.records import Channel, Message, Schema

    if len(tail) < 9 + 32 or tail[0] != Opcode.CHUNK:
        return []
    body = tail[9:]
    (clen,) = struct.unpack_from("<I", body, 28)     # after start, end, uncompressed size, crc
    pos = 32 + clen + 8                              # compression name, then the data length
    compression, data = body[32:32 + clen].decode("utf-8", "replace"), body[pos:]
    try:
        if compression == "zstd":
            raw = zstd.ZstdDecompressor().decompress(data)
        elif compression == "lz4":
            import lz4.frame  # type: ignore[import-not-found]
            raw = lz4.frame.LZ4FrameDecompressor().decompress(data)
        elif compression == "":
            raw = data
        else:
            return []
    except Exception:  # noqa: BLE001 - undecodable prefix (or no lz4 module): nothing to salvage
        return []
    readers = {Opcode.SCHEMA: Schema.read, Opcode.CHANNEL: Channel.read}
    records: list[Any] = []
    at = 0
    while at + 9 <= len(raw):
        op, length = raw[at], struct.unpack_from("<Q", raw, at + 1)[0]
        if at + 9 + length > len(raw):
            break                                       # the record the cut went through
        stream = ReadDataStream(BytesIO(raw[at + 9: at + 9 + length]))
        try:
            if op == Opcode.MESSAGE:
                records.append(Message.read(stream, length))
            elif op in readers:
                records.append(readers[op](stream))
        except Exception:  # noqa: BLE001 - garbage where the cut left it: stop here
            break
        at += 9 + length
    return records


def _mcap_records(fh: Any, on_break: Any) -> Iterator[Any]:
    """Schema, Channel and Message records of an MCAP file in file order, needing no footer or summary.

    Reading stops at the first damage; when the file simply ends (truncated), the complete records of
    the chunk it ends in are recovered first. ``on_break(offset, exception, salvaged)`` says where and
    why reading stopped.
    """
    from mcap.exceptions import EndOfFile
    from mcap.records import Channel, Chunk, Message, Schema
    from mcap.stream_reader import StreamReader, breakup_chunk

    last_end = fh.tell()
    try:
        for rec in StreamReader(fh, emit_chunks=True, record_size_limit=1 << 31).records:
            if isinstance(rec, Chunk):
                yield from breakup_chunk(rec)
            elif isinstance(rec, (Schema, Channel, Message)):
                yield rec
            last_end = fh.tell()         # the generator has read exactly this record so far
    except Exception as exc:  # noqa: BLE001 - truncation/corruption ends the stream here
        offset = fh.tell()
        salvaged: list[Any] = []
        if isinstance(exc, EndOfFile):
            fh.seek(last_end)
            salvaged = _salvage_chunk(fh.read())
        yield from salvaged
        on_break(offset, exc, sum(isinstance(r, Message) for r in salvaged))


# How deep `find_bags` looks below the folder it is given (fleet/day/vehicle/bag is 3).
FIND_DEPTH = 4


def _storage_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _storage_kind(p) and p.is_file())


def is_bag_folder(folder: Path) -> bool:
    """A rosbag2 recording folder: metadata.yaml, or storage files named as rosbag2 names them.

    rosbag2 writes metadata.yaml only when recording ends, so a recorder that crashed leaves just
    ``<name>_0.mcap``, ``<name>_1.mcap``, ... (one prefix, indices from 0). Loose files with other
    names (``a.mcap``, ``b.mcap``) are separate single-file bags, not one recording; a folder holding
    a single storage file is that recording either way.
    """
    if (folder / "metadata.yaml").is_file():
        return True
    files = _storage_files(folder)
    if len(files) < 2:
        return bool(files)
    stems = [f.name.split(".")[0] for f in files]
    prefixes = {s.rpartition("_")[0] for s in stems}
    indices = sorted(s.rpartition("_")[2] for s in stems)
    return (len(prefixes) == 1 and "" not in prefixes and all(i.isdigit() for i in indices)
            and sorted(map(int, indices)) == list(range(len(files))))


def find_bags(root: Path, max_depth: int = FIND_DEPTH) -> tuple[list[Path], list[str]]:
    """Bags in or below ``root``: bag folders and single storage files, at most ``max_depth`` levels
    down (a bag folder is not searched further). Returns the bags and problems (unreadable folders)."""
    bags: list[Path] = []
    problems: list[str] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            if is_bag_folder(folder):
                bags.append(folder)
                return
            entries = sorted(folder.iterdir())
        except OSError as exc:
            problems.append(f"{folder}: cannot look inside: {exc.strerror or exc}")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_file() and _storage_kind(entry):
                bags.append(entry)
            elif entry.is_dir() and depth < max_depth:
                walk(entry, depth + 1)

    walk(root, 0)
    return bags, problems


def is_bag(path: Path) -> bool:
    """A rosbag2 recording folder (see :func:`is_bag_folder`) or a single .mcap/.db3 file."""
    if path.is_dir():
        return is_bag_folder(path)
    return path.is_file() and _storage_kind(path) is not None


@dataclass
class _Metadata:
    version: int | None = None
    storage: str | None = None
    files: list[Path] = field(default_factory=list)
    topics: list[TopicInfo] = field(default_factory=list)
    message_count: int | None = None
    compression_mode: str | None = None   # None | "file" | "message"
    compression_format: str | None = None


# metadata.yaml of a real recording is a few KiB (one entry per topic and file); more is not one.
METADATA_MAX_BYTES = 4 << 20


def load_metadata_yaml(text: str) -> Any:
    """The one place bag metadata is parsed: plain YAML data only (no Python objects), with bounded
    size and alias expansion (an alias bomb in a recording's metadata costs one read problem)."""
    return safe_yaml.load_text(text, "metadata.yaml", max_bytes=METADATA_MAX_BYTES)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """A YAML error in one line (PyYAML's own message spans several, with a code excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"not valid YAML: {what}" + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")


class _Fields:
    """Typed access to one mapping of metadata.yaml: a missing key or a value of the wrong type is a
    :class:`BagError` naming the key's path, never a KeyError/TypeError from deep inside the reader."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise BagError(f"{where or 'the document'} is {_kind(data)}, not a mapping")
        self.data, self.where = data, where

    def _at(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, kind: type | tuple[type, ...], required: bool = False) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BagError(f"{self.where or 'the document'} has no {key!r}")
            return None
        # bool is an int to Python, never to rosbag2 (a count of `true` messages is damage)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise BagError(f"{self._at(key)} is {_kind(value)}, expected {_names(kind)}")
        return value

    def count(self, key: str) -> int | None:
        value = self.get(key, int)
        if value is not None and value < 0:
            raise BagError(f"{self._at(key)} is negative ({value})")
        return value

    def sub(self, key: str, required: bool = False) -> _Fields | None:
        value = self.get(key, dict, required)
        return None if value is None else _Fields(value, self._at(key))

    def items(self, key: str, kind: type) -> list[Any]:
        values = self.get(key, list) or []
        for i, v in enumerate(values):
            if not isinstance(v, kind):
                raise BagError(f"{self._at(key)}[{i}] is {_kind(v)}, expected {_names(kind)}")
        return values


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind: type | tuple[type, ...]) -> str:
    words = {str: "a string", int: "an integer", list: "a list", dict: "a mapping", bool: "true/false"}
    return " or ".join(words.get(k, k.__name__) for k in _tuple(kind))


def _kind(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40] + '...' if len(text) > 40 else text}"


def _read_metadata(path: Path) -> _Metadata:
    """metadata.yaml, checked key by key; :class:`BagError` (one line) for anything unusable."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(METADATA_MAX_BYTES + 1)
        if len(raw) > METADATA_MAX_BYTES:
            raise BagError(f"{path} is not a rosbag2 metadata file: larger than "
                           f"{METADATA_MAX_BYTES >> 20} MiB")
        doc = load_metadata_yaml(raw.decode("utf-8"))
    except OSError as exc:
        raise BagError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BagError(f"{path} is not a rosbag2 metadata file: not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start})") from None
    except yaml.YAMLError as exc:
        raise BagError(f"{path} is {_yaml_reason(exc)}") from None
    except (ValueError, RecursionError) as exc:   # e.g. an integer with 10^5 digits, deep nesting
        raise BagError(f"{path} is not a usable rosbag2 metadata file: {type(exc).__name__}: "
                       f"{str(exc)[:120]}") from None
    try:
        return _parse_metadata(path, doc)
    except BagError as exc:
        raise BagError(f"{path} is not a usable rosbag2 metadata file: {exc}") from None


def _parse_metadata(path: Path, doc: Any) -> _Metadata:
    info = _Fields(doc, "").sub("rosbag2_bagfile_information", required=True)
    assert info is not None
    meta = _Metadata(version=info.count("version"), storage=info.get("storage_identifier", str),
                     message_count=info.count("message_count"))
    # Versions 1-3 stored paths relative to the parent folder; only the file name is meaningful
    # (and a name is all that is trusted: "../../x.mcap" reads x.mcap in the bag folder).
    meta.files = [path.parent / Path(p).name for p in info.items("relative_file_paths", str)]
    for i, entry in enumerate(info.items("topics_with_message_count", dict)):
        item = _Fields(entry, f"{info.where}.topics_with_message_count[{i}]")
        tm = item.sub("topic_metadata", required=True)
        assert tm is not None
        name, msgtype = tm.get("name", str, required=True), tm.get("type", str, required=True)
        fmt = tm.get("serialization_format", str) or "cdr"
        if fmt != "cdr":
            raise BagError(f"topic {name}: serialization format {fmt!r} is not supported (only cdr)")
        meta.topics.append(TopicInfo(name, normalize_type(msgtype), declared=item.count("message_count")))
    mode = (info.get("compression_mode", str) or "").lower()
    meta.compression_mode = mode if mode and mode != "none" else None
    meta.compression_format = info.get("compression_format", str) or None
    if meta.compression_mode and meta.compression_format != "zstd":
        raise BagError(f"compression format {meta.compression_format!r} is not supported (zstd only)")
    return meta


class BagReader:
    """Messages of one rosbag2 recording, file by file, with an account of what could not be read.

    ``path`` is a bag directory (metadata.yaml of any version 1-9 plus its storage files, possibly
    split over several files and zstd-compressed per file or per message) or a single ``.mcap`` /
    ``.db3`` file. Raises :class:`BagError` for input that is not a bag at all.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.issues: list[ReadIssue] = []
        self.backends: dict[str, str] = {}       # storage file -> "rosbags" | "mcap" | "sqlite3"
        # Why a damaged file showed no topics while its topics were listed (for "no topics" errors).
        self.scan_notes: list[str] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if not self.path.exists():
            raise BagError(f"{self.path} does not exist")
        if self.path.is_dir():
            self._open_dir()
        elif _storage_kind(self.path):
            self.meta = _Metadata(storage=_storage_kind(self.path), files=[self.path])
            if self.path.suffix == ".zstd":
                self.meta.compression_mode, self.meta.compression_format = "file", "zstd"
        else:
            raise BagError(f"{self.path} is not a rosbag2 recording: expected a bag directory with "
                           "metadata.yaml, or a .mcap / .db3 storage file")
        self.topics: dict[str, TopicInfo] = {t.name: t for t in self.meta.topics}
        self._scan_topics()

    # -- opening ----------------------------------------------------------------------------
    def _open_dir(self) -> None:
        meta_path = self.path / "metadata.yaml"
        storage_files = sorted(p for p in self.path.iterdir() if p.is_file() and _storage_kind(p))
        if meta_path.is_file():
            try:
                self.meta = _read_metadata(meta_path)
            except BagError as exc:
                if not storage_files:
                    raise
                # A damaged metadata.yaml must not cost the recording: read the storage files.
                self.issues.append(ReadIssue("metadata.yaml", 0, None, f"{exc}; reading the "
                                             "storage files in the folder instead"))
                self.meta = _Metadata(storage=_storage_kind(storage_files[0]), files=storage_files)
                return
            missing = [p.name for p in self.meta.files if not p.is_file()]
            if missing:
                self.issues.append(ReadIssue(", ".join(missing), 0, None,
                                             "listed in metadata.yaml but missing"))
                self.meta.files = [p for p in self.meta.files if p.is_file()]
            if not self.meta.files and storage_files:
                self.meta.files = storage_files
            if self.meta.storage not in ("mcap", "sqlite3", None):
                raise BagError(f"{self.path}: storage plugin {self.meta.storage!r} is not supported "
                               "(mcap and sqlite3 are)")
            if not self.meta.files:
                raise BagError(f"{self.path}: metadata.yaml lists no storage file that exists")
        elif storage_files:
            self.meta = _Metadata(storage=_storage_kind(storage_files[0]), files=storage_files)
        else:
            raise BagError(f"{self.path} is not a rosbag2 recording: the folder has no metadata.yaml "
                           "and no .mcap / .db3 file")

    def _scan_topics(self) -> None:
        """Add topics and message definitions stored in the files (metadata may lack them)."""
        for file in self.meta.files:
            try:
                storage = self._open_rosbags(file)
            except Exception:   # noqa: BLE001 - damaged file: the independent readers list its topics
                # Without metadata.yaml (a crashed recorder writes it only at the end) this is the
                # only way to know the topics before the messages are streamed.
                if _storage_kind(file) == "mcap":
                    self._scan_mcap_channels(file)
                else:
                    self._scan_sqlite_topics(file)
                continue
            try:
                for conn in storage.connections:
                    self._learn_topic(conn.topic, conn.msgtype, conn.msgdef.data
                                      if conn.msgdef.format.name == "MSG" else "")
            finally:
                storage.close()

    def _scan_mcap_channels(self, file: Path) -> None:
        """Topics and definitions of an MCAP file without footer/summary, read record by record."""
        schemas: dict[int, tuple[str, str]] = {}
        found = 0

        def on_break(offset: int, exc: Exception, salvaged: int) -> None:
            if not found:     # the message pass reports the break itself as a ReadIssue
                self.scan_notes.append(f"{file.name} breaks at byte {offset}, before any topic is "
                                       f"complete: {_stream_break(exc)}")
        try:
            with self._storage_path(file).open("rb") as fh:
                for rec in _mcap_records(fh, on_break):
                    if self._learn_record(rec, schemas) is not None:
                        found += 1
        except OSError as exc:
            self.scan_notes.append(f"{file.name}: {exc.strerror or exc}")

    def _scan_sqlite_topics(self, file: Path) -> None:
        try:
            con = sqlite3.connect(f"file:{self._storage_path(file)}?mode=ro", uri=True)
        except sqlite3.Error:
            return
        try:
            for name, typ in con.execute("SELECT name, type FROM topics"):
                self._learn_topic(name, typ)
        except sqlite3.Error:
            pass      # reported when its messages are read
        finally:
            con.close()

    def _learn_record(self, rec: Any, schemas: dict[int, tuple[str, str]]) -> TopicInfo | None:
        """Schema and Channel records of a raw MCAP stream: remember the schema, learn the channel's
        topic (returned); None for every other record."""
        from mcap.records import Channel, Schema   # already imported by the caller: a dict lookup
        if isinstance(rec, Schema):
            text = rec.data.decode("utf-8", "replace") if rec.encoding == "ros2msg" else ""
            schemas[rec.id] = (rec.name, text)
        elif isinstance(rec, Channel):
            name, text = schemas.get(rec.schema_id, ("", ""))
            return self._learn_topic(rec.topic, name, text)
        return None

    def _learn_topic(self, name: str, msgtype: str, msgdef: str = "") -> TopicInfo:
        msgtype = normalize_type(msgtype)
        info = self.topics.get(name)
        if info is None:
            info = self.topics[name] = TopicInfo(name, msgtype)
        if msgdef and not info.msgdef:
            info.msgdef = msgdef
        return info

    def _storage_path(self, file: Path) -> Path:
        if self.meta.compression_mode != "file" and file.suffix != ".zstd":
            return file
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="pebal_bag_")
        out = Path(self._tmp.name) / file.with_suffix("").name
        if not out.exists():
            try:
                with file.open("rb") as src, zstd.open(src, "rb") as zin, out.open("wb") as dst:
                    while chunk := zin.read(1 << 20):
                        dst.write(chunk)
            except (OSError, zstd.ZstdError, EOFError) as exc:
                # Keep the decompressed prefix: the storage fallback reads what is intact in it.
                self.issues.append(ReadIssue(file.name, 0, None, f"zstd file decompression "
                                             f"stopped: {exc}; reading the intact prefix"))
        return out

    def _open_rosbags(self, file: Path) -> Any:
        path = self._storage_path(file)
        kind = _storage_kind(file)
        storage = (_RosbagsMcap if kind == "mcap" else _RosbagsSqlite)(path)
        storage.open()
        return storage

    # -- reading ----------------------------------------------------------------------------
    @property
    def declared_total(self) -> int | None:
        return self.meta.message_count

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def messages(self, topics: Collection[str] | None = None) -> Iterator[RawMessage]:
        """Every readable message of the selected topics (all when None), file after file."""
        wanted = set(topics) if topics is not None else None
        for file in self.meta.files:
            for msg in self._file_messages(file):
                info = self.topics[msg.topic]
                info.read += 1
                if wanted is None or msg.topic in wanted:
                    # Per-message compression is declared only in metadata.yaml, which a crashed
                    # recorder never wrote: a payload starting with zstd's magic number is one
                    # (CDR starts with its encapsulation header, whose first byte is 0).
                    if self.meta.compression_mode == "message" or msg.data[:4] == ZSTD_MAGIC:
                        try:
                            msg.data = _unzstd(msg.data)
                        except (zstd.ZstdError, ValueError) as exc:
                            self.issues.append(ReadIssue(file.name, 0, None, f"message on "
                                               f"{msg.topic} at t={msg.timestamp}: bad zstd "
                                               f"payload ({exc}); message skipped"))
                            continue
                    yield msg

    def _file_messages(self, file: Path) -> Iterator[RawMessage]:
        kind = _storage_kind(file)
        try:
            storage = self._open_rosbags(file)
        except Exception as exc:  # noqa: BLE001 - any failure: try the independent reader
            reason = f"rosbags could not open it ({exc})"
            if kind == "mcap":
                self.backends[file.name] = "mcap"
                yield from self._mcap_stream(file, reason)
            else:
                self.backends[file.name] = "sqlite3"
                yield from self._sqlite_raw(file, reason)
            return
        self.backends[file.name] = "rosbags"
        count = 0
        try:
            for conn in storage.connections:
                self._learn_topic(conn.topic, conn.msgtype)
            # All of the file's own connections: no QoS matching against metadata.yaml (see above).
            source = (self._mcap_chunks(file, storage) if getattr(storage, "chunks", None)
                      else storage.messages(storage.connections))
            for conn, ts, data in source:
                yield RawMessage(conn.topic, normalize_type(conn.msgtype), ts, bytes(data))
                count += 1
        except Exception as exc:  # noqa: BLE001 - a damaged chunk/row: report, keep what was read
            self.issues.append(ReadIssue(file.name, count, None, f"read {count} messages, then "
                                         f"{type(exc).__name__}: {exc}"))
        finally:
            storage.close()

    def _mcap_chunks(self, file: Path, storage: Any) -> Iterator[tuple[Any, int, bytes]]:
        """Chunk by chunk, in time order, so that one damaged chunk costs only its own messages.

        rosbags' ``McapReader.messages`` merges all chunks and stops at the first bad one; its
        per-chunk source ``msgsrc`` decodes a whole chunk in one step, so wrapping each one in its own
        error handler keeps every intact chunk (and tells exactly how many messages were lost).
        """
        cmap = {c.id: c for c in storage.connections}

        def one_chunk(chunk: Any) -> Iterator[Any]:
            try:
                yield from _msgsrc(chunk, cmap, chunk.message_start_time,
                                   chunk.message_end_time + 1, storage.bio)
            except Exception as exc:  # noqa: BLE001 - damaged chunk: account for it, go on
                lost = sum(chunk.channel_count.values())
                self.issues.append(ReadIssue(file.name, 0, chunk.chunk_start_offset,
                                             f"chunk with {lost} messages unreadable "
                                             f"({type(exc).__name__}: {exc}); skipped"))

        for msg in heapq.merge(*(one_chunk(c) for c in storage.chunks)):
            if msg.connection is not None:      # msgsrc's leading sentinel has no connection
                yield msg.connection, msg.timestamp, msg.data

    def _mcap_stream(self, file: Path, why: str) -> Iterator[RawMessage]:
        from mcap.records import Message

        path = self._storage_path(file)
        schemas: dict[int, tuple[str, str]] = {}
        channels: dict[int, TopicInfo] = {}
        count = 0

        def on_break(offset: int, exc: Exception, salvaged: int) -> None:
            saved = (f" ({salvaged} of them recovered from the intact part of the chunk it was cut in)"
                     if salvaged else "")
            self.issues.append(ReadIssue(file.name, count, offset, f"{why}; read {count} messages "
                                         f"sequentially{saved}, then {_stream_break(exc)}"))
        with path.open("rb") as fh:
            for rec in _mcap_records(fh, on_break):
                topic = self._learn_record(rec, schemas)
                if topic is not None:
                    channels[rec.id] = topic
                elif isinstance(rec, Message):
                    info = channels.get(rec.channel_id)
                    if info is None:
                        continue  # a message before its channel: invalid MCAP, nothing to decode
                    yield RawMessage(info.name, info.msgtype, rec.log_time, bytes(rec.data))
                    count += 1

    def _sqlite_raw(self, file: Path, why: str) -> Iterator[RawMessage]:
        path = self._storage_path(file)
        count = 0
        try:
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            self.issues.append(ReadIssue(file.name, 0, None, f"{why}; sqlite3: {exc}"))
            return
        try:
            topics = {tid: self._learn_topic(name, typ) for tid, name, typ in
                      con.execute("SELECT id, name, type FROM topics")}
            cur = con.execute("SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp, id")
            for tid, ts, data in cur:
                info = topics.get(tid)
                if info is None:
                    continue
                yield RawMessage(info.name, info.msgtype, int(ts), bytes(data))
                count += 1
        except sqlite3.Error as exc:
            self.issues.append(ReadIssue(file.name, count, None, f"{why}; read {count} messages with "
                                         f"sqlite3, then: {exc}"))
        finally:
            con.close()


# -- typestore / decoding ------------------------------------------------------------------------
def make_typestore(topics: Collection[TopicInfo] = ()) -> Any:
    """The latest ROS 2 message set plus any message definitions the bag carries."""
    store = get_typestore(Stores.LATEST)
    for t in topics:
        if t.msgdef and t.msgtype not in store.fielddefs:
            try:
                store.register(get_types_from_msg(t.msgdef, t.msgtype))
            except Exception:  # noqa: BLE001 - an undecodable definition makes the type "unknown"
                pass
    return store


def count_messages(path: str | Path) -> tuple[dict[str, int], list[ReadIssue]]:
    """Messages per topic that can actually be read (what `ros2 bag info` would show)."""
    with BagReader(path) as reader:
        counts: dict[str, int] = {name: 0 for name in reader.topics}
        for msg in reader.messages():
            counts[msg.topic] = counts.get(msg.topic, 0) + 1
        return counts, list(reader.issues)


# -- writing -------------------------------------------------------------------------------------
class BagWriter:
    """A rosbag2 recording written with rosbags' writer (MCAP by default, metadata version 9).

    Every topic's full message definition goes into the file (MCAP schema / sqlite3 definitions
    table), so Foxglove and ``ros2 bag play`` can decode custom types without their package built.

    ``threaded=True`` serialises and writes on a background thread (in call order, so the file is
    the same): rosbags' MCAP writer copies each payload several times, which then overlaps with
    inference (ONNX Runtime and TensorRT release the GIL) instead of adding to it. Messages handed
    to :meth:`write` must not be modified afterwards.

    ``deferred=True`` (threaded only): :meth:`write` collects the messages and :meth:`release` hands
    them to the thread. That work holds the GIL most of the time (serialising, copying into the
    chunk), so a thread started as soon as a frame's messages exist fights the next frame's
    decoding and pre-processing for it: each short OpenCV call that lets the GIL go can wait up to
    the interpreter's 5 ms switch interval to get it back. Released when the next inference starts
    (``FramePipeline.process(before_inference=...)``), it runs while the main thread needs no GIL.
    """

    def __init__(self, path: str | Path, typestore: Any, *, storage: str = "mcap", version: int = 9,
                 compression: str | None = None, threaded: bool = False, queue_size: int = 64,
                 deferred: bool = False) -> None:
        from rosbags.rosbag2 import StoragePlugin, WriterError
        from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

        from .mcap_chunks import writer_class

        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"{self.path} exists already; remove it or choose another output folder")
        plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
        self.typestore = typestore
        self._conns: dict[str, Any] = {}
        self.counts: dict[str, int] = {}
        self._queue: Any = None
        self._thread: Any = None
        self._error: BaseException | None = None
        self._held: list[tuple[Any, int, Any, bool]] | None = [] if (threaded and deferred) else None
        Writer = writer_class(storage, compression)     # rosbags' Writer (MCAP: fewer payload copies)
        self._writer = Writer(self.path, version=version, storage_plugin=plugin)  # type: ignore[arg-type]
        if compression:
            self._writer.set_compression(CompressionMode[compression.upper()], CompressionFormat.ZSTD)
        try:
            self._writer.open()
        except (OSError, WriterError) as exc:
            raise self._failed(exc) from exc
        if threaded:
            import queue
            import threading

            self._queue = queue.Queue(maxsize=queue_size)
            self._thread = threading.Thread(target=self._drain, name="bag-writer", daemon=True)
            self._thread.start()

    def add_topic(self, topic: str, msgtype: str) -> None:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self.counts[topic] = 0

    def _write_now(self, conn: Any, timestamp: int, msg: Any, raw: bool) -> None:
        data = msg if raw else self.typestore.serialize_cdr(msg, conn.msgtype)
        self._writer.write(conn, timestamp, data)

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._write_now(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    @property
    def error(self) -> BaseException | None:
        """The first write failure (None while every write succeeded)."""
        return self._error

    def _failed(self, exc: BaseException) -> BagWriteError:
        """The failure as one line naming the output: the file where the OS says so, else the bag."""
        if self._error is None:
            self._error = exc
        if isinstance(exc, OSError):
            where = exc.filename if exc.filename is not None else self.path
            return BagWriteError(f"{where}: {exc.strerror or exc}")
        return BagWriteError(f"{self.path}: writing failed: {type(exc).__name__}: {exc}")

    def _submit(self, topic: str, timestamp: int, msg: Any, raw: bool) -> None:
        conn = self._conns[topic]
        if self._error is not None:
            raise self._failed(self._error) from self._error
        if self._held is not None:
            self._held.append((conn, timestamp, msg, raw))
        elif self._queue is not None:
            self._queue.put((conn, timestamp, msg, raw))
        else:
            try:
                self._write_now(conn, timestamp, msg, raw)
            except OSError as exc:
                raise self._failed(exc) from exc
        self.counts[topic] += 1

    def write(self, topic: str, timestamp: int, msg: Any) -> None:
        """Serialise ``msg`` (a typestore message object) to CDR and append it."""
        self._submit(topic, timestamp, msg, False)

    def write_raw(self, topic: str, timestamp: int, data: bytes | memoryview) -> None:
        self._submit(topic, timestamp, data, True)

    def release(self) -> None:
        """Hand the messages collected by a ``deferred`` writer to its thread (in write order)."""
        if self._held:
            for item in self._held:
                self._queue.put(item)
            self._held.clear()

    def close(self) -> None:
        """Flush and finish the file (footer, metadata.yaml); :class:`BagWriteError` if any write
        failed, in which case the bag is not complete."""
        from rosbags.rosbag2 import WriterError

        self.release()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        try:
            self._writer.close()
        except (OSError, WriterError) as exc:
            raise self._failed(exc) from exc
        if self._error is not None:
            raise self._failed(self._error) from self._error

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
