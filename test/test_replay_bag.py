"""rosbag2 reading: real bags from ROS 2's test suite, every storage/version/split/compression variant
we can generate, and damaged files (truncated, corrupt, not a bag)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from pebal_ros.replay.bag import BagError, BagReader, count_messages, make_typestore
from pebal_ros.replay.recording import write_recording

RNG = np.random.default_rng(7)
FRAMES = [(RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8),
           RNG.integers(0, 2, (24, 40), dtype=np.uint8)) for _ in range(6)]
TOPICS = {"/camera/image_raw": 6, "/camera/image_raw/compressed": 6, "/camera/labels": 6}


def _write(path: Path, **kw) -> Path:
    write_recording(path, FRAMES, compressed_topic="/camera/image_raw/compressed", **kw)
    return path


def _decoded_images(path: Path) -> list[np.ndarray]:
    with BagReader(path) as reader:
        store = make_typestore(reader.topics.values())
        return [store.deserialize_cdr(m.data, m.msgtype).data.reshape(24, 40, 3).copy()
                for m in reader.messages(["/camera/image_raw"])]


# -- real rosbag2 files written by ROS 2 ---------------------------------------------------------
@pytest.mark.parametrize("name", ["talker_mcap", "talker_sqlite3"])
def test_real_talker_bags_all_messages(shared_data: Path, name: str) -> None:
    bag = shared_data / "rosbag2" / name
    counts, issues = count_messages(bag)
    assert counts == {"/topic": 10, "/rosout": 10, "/parameter_events": 0}
    assert issues == []
    with BagReader(bag) as reader:
        store = make_typestore(reader.topics.values())
        texts = [store.deserialize_cdr(m.data, m.msgtype).data for m in reader.messages(["/topic"])]
        assert reader.topics["/topic"].declared == 10 and reader.topics["/topic"].read == 10
    assert texts == [f"Hello, world! {i}" for i in range(10)]


def test_real_talker_bag_trap_explained(shared_data: Path) -> None:
    """The trap: rosbags' high-level Reader drops every message because the QoS written in
    metadata.yaml (deadline 0/0) differs from the one in the storage file (2147483647/4294967295)."""
    bag = shared_data / "rosbag2" / "talker_mcap"
    with Reader(bag) as reader:
        high_level = sum(1 for _ in reader.messages())
        meta = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
        stored = {c.topic: c.ext.offered_qos_profiles
                  for s in reader.storage.storages for c in s.connections}
    if high_level == 20:
        pytest.skip("this rosbags version no longer has the QoS-matching trap")
    assert high_level == 0
    assert meta["/topic"][0].deadline.sec == 0 and stored["/topic"][0].deadline.sec == 2147483647


def test_real_cdr_test_bag_custom_types(shared_data: Path) -> None:
    bag = shared_data / "rosbag2" / "cdr_test_mcap"
    counts, issues = count_messages(bag)
    assert counts == {"/array_topic": 4, "/test_topic": 3} and issues == []
    with BagReader(bag) as reader:
        # test_msgs is not in any stock typestore: it decodes only from the schema in the file.
        store = make_typestore(reader.topics.values())
        msgs = [store.deserialize_cdr(m.data, m.msgtype) for m in reader.messages()]
    assert {type(m).__name__ for m in msgs} == {"test_msgs__msg__BasicTypes", "test_msgs__msg__Arrays"}


# -- generated bags: storage, metadata version, compression, split --------------------------------
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
@pytest.mark.parametrize("compression", [None, "file", "message"])
def test_storage_and_compression(tmp_path: Path, storage: str, compression: str | None) -> None:
    bag = _write(tmp_path / "bag", storage=storage, compression=compression)
    counts, issues = count_messages(bag)
    assert counts == TOPICS and issues == []
    assert all(np.array_equal(a, b[0]) for a, b in zip(_decoded_images(bag), FRAMES))


def _downgrade_metadata(bag: Path, version: int) -> None:
    """Rewrite metadata.yaml as an older rosbag2 wrote it (fields added after `version` removed)."""
    meta_path = bag / "metadata.yaml"
    doc = yaml.safe_load(meta_path.read_text())
    info = doc["rosbag2_bagfile_information"]
    info["version"] = version
    if version < 8:
        info.pop("ros_distro", None)
    if version < 7:
        for t in info["topics_with_message_count"]:
            t["topic_metadata"].pop("type_description_hash", None)
    if version < 6:
        info.pop("custom_data", None)
    if version < 5:
        info.pop("files", None)
    for t in info["topics_with_message_count"]:
        # Foxy..Iron: QoS as a YAML string with the old numeric enums.
        t["topic_metadata"]["offered_qos_profiles"] = "" if version < 9 else []
    meta_path.write_text(yaml.safe_dump(doc))


@pytest.mark.parametrize("version", [4, 5, 6, 7, 8, 9])
def test_metadata_versions_foxy_to_jazzy(tmp_path: Path, version: int) -> None:
    bag = _write(tmp_path / "bag", version=8 if version < 9 else 9)
    _downgrade_metadata(bag, version)
    counts, issues = count_messages(bag)
    assert counts == TOPICS and issues == []


def test_split_bag(tmp_path: Path) -> None:
    """A bag recorded with --max-bag-size: several storage files, one metadata.yaml."""
    a = _write(tmp_path / "a")
    write_recording(tmp_path / "b", FRAMES[:2], compressed_topic="/camera/image_raw/compressed")
    split = tmp_path / "split"
    split.mkdir()
    shutil.copy(a / "a.mcap", split / "split_0.mcap")
    shutil.copy(tmp_path / "b" / "b.mcap", split / "split_1.mcap")
    doc = yaml.safe_load((a / "metadata.yaml").read_text())
    info = doc["rosbag2_bagfile_information"]
    info["relative_file_paths"] = ["split_0.mcap", "split_1.mcap"]
    info["message_count"] = 24
    for t in info["topics_with_message_count"]:
        t["message_count"] = 8
    (split / "metadata.yaml").write_text(yaml.safe_dump(doc))
    counts, issues = count_messages(split)
    assert counts == {k: 8 for k in TOPICS} and issues == []


def test_single_storage_file_and_folder_without_metadata(tmp_path: Path) -> None:
    bag = _write(tmp_path / "bag")
    assert count_messages(bag / "bag.mcap")[0] == TOPICS
    (bag / "metadata.yaml").unlink()
    assert count_messages(bag)[0] == TOPICS


# -- bad input -----------------------------------------------------------------------------------
def test_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(BagError, match="does not exist"):
        BagReader(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BagError, match="not a rosbag2 recording"):
        BagReader(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml"):
        BagReader(tmp_path / "empty")


def test_garbage_mcap_file(tmp_path: Path) -> None:
    fake = tmp_path / "fake.mcap"
    fake.write_bytes(b"this is not an mcap file at all" * 10)
    with BagReader(fake) as reader:
        assert list(reader.messages()) == []
        assert len(reader.issues) == 1 and "fake.mcap" in str(reader.issues[0])


BIG = [(RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8), np.zeros((96, 128), np.uint8))
       for _ in range(40)]     # ~1.9 MB of images: rosbags' writer closes a chunk every 1 MiB


def _write_big(path: Path) -> Path:
    write_recording(path, BIG)
    return path


def _messages_before(data: bytes, cut: int) -> int:
    """Messages whose record lies wholly before byte ``cut``, from the intact file's own chunk layout
    (rosbags' summary-based reader + the MCAP record format; independent of the recovery code)."""
    import struct
    import tempfile

    from rosbags.rosbag2.storage_mcap import McapReader

    with tempfile.TemporaryDirectory() as tmp:
        full = Path(tmp) / "full.mcap"
        full.write_bytes(data)
        storage = McapReader(full)
        storage.open()
        chunks = [(c.chunk_start_offset, c.chunk_length) for c in storage.chunks]
        storage.close()
    n = 0
    for start, _length in chunks:
        clen = struct.unpack_from("<I", data, start + 9 + 28)[0]
        assert clen == 0, "the generated bags have uncompressed chunks"
        at = start + 9 + 32 + clen + 8
        size = struct.unpack_from("<Q", data, at - 8)[0]
        end = at + size
        while at < end:
            op, length = data[at], struct.unpack_from("<Q", data, at + 1)[0]
            at += 9 + length
            n += op == 0x05 and at <= cut
    return n


@pytest.mark.parametrize("fraction", [0.3, 0.75, 0.95])
def test_truncated_mcap_reads_intact_prefix(tmp_path: Path, fraction: float) -> None:
    """A recorder that crashed leaves an MCAP without footer: read every complete message, including
    those in the front of the chunk it was cut in, and say where it broke."""
    bag = _write_big(tmp_path / "bag")
    data = (bag / "bag.mcap").read_bytes()
    cut = int(len(data) * fraction)
    expected = _messages_before(data, cut)
    (bag / "bag.mcap").write_bytes(data[:cut])
    counts, issues = count_messages(bag)
    total = sum(counts.values())
    assert total == expected and 0 < total < 80
    assert len(issues) == 1 and issues[0].offset is not None and issues[0].messages_before == total
    assert "bag.mcap at byte" in str(issues[0]) and "could not open" in str(issues[0])
    assert "recovered from the intact part of the chunk" in str(issues[0])
    # Decoded, not just counted: the recovered images are the recorded ones, in order.
    images = _decoded_big(bag)
    assert len(images) == counts["/camera/image_raw"]
    assert all(np.array_equal(a, b) for a, (b, _) in zip(images, BIG))


def _decoded_big(path: Path) -> list[np.ndarray]:
    with BagReader(path) as reader:
        store = make_typestore(reader.topics.values())
        return [store.deserialize_cdr(m.data, m.msgtype).data.reshape(96, 128, 3).copy()
                for m in reader.messages(["/camera/image_raw"])]


def test_corrupt_mcap_chunk(tmp_path: Path) -> None:
    """Damage inside one chunk costs exactly that chunk's messages; the issue says which and where."""
    from rosbags.rosbag2.storage_mcap import McapReader

    bag = _write_big(tmp_path / "bag")
    path = bag / "bag.mcap"
    storage = McapReader(path)
    storage.open()
    chunk = storage.chunks[1]
    lost = sum(chunk.channel_count.values())
    storage.close()
    data = bytearray(path.read_bytes())
    # Chunk record: opcode(1) length(8) start end size crc(28) compression(4+0) compressed size(8),
    # then the first inner record: opcode + length. Break that length.
    inner = chunk.chunk_start_offset + 9 + 28 + 4 + 8
    data[inner + 1: inner + 9] = b"\xff" * 8
    path.write_bytes(bytes(data))
    with BagReader(bag) as reader:
        read = sum(1 for _ in reader.messages())
        assert read == 80 - lost and 0 < lost < 80
        assert len(reader.issues) == 1
        assert f"at byte {chunk.chunk_start_offset}" in str(reader.issues[0])
        assert f"{lost} messages" in str(reader.issues[0])


def test_truncated_sqlite3(tmp_path: Path) -> None:
    bag = _write(tmp_path / "bag", storage="sqlite3")
    db = bag / "bag.db3"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])
    with BagReader(bag) as reader:
        read = sum(1 for _ in reader.messages())
        assert read < 18 and reader.issues
        assert "bag.db3" in str(reader.issues[0])


def test_missing_storage_file_and_broken_metadata(tmp_path: Path) -> None:
    bag = _write(tmp_path / "bag")
    (bag / "metadata.yaml").write_text("{{{ not yaml")
    counts, issues = count_messages(bag)
    assert counts == TOPICS and "metadata.yaml" in str(issues[0])
    (bag / "bag.mcap").unlink()
    with pytest.raises(BagError):
        BagReader(bag)


def test_deterministic_writer(tmp_path: Path) -> None:
    a = _write(tmp_path / "x" / "bag")
    b = _write(tmp_path / "y" / "bag")
    assert (a / "bag.mcap").read_bytes() == (b / "bag.mcap").read_bytes()


def test_threaded_writer_same_file_and_errors_surface(tmp_path: Path) -> None:
    from pebal_ros.replay.bag import BagWriter, BagWriteError
    from pebal_ros.replay.recording import image_message

    store = make_typestore()
    msgs = [image_message(store, f, 1000 + i, "cam") for i, (f, _) in enumerate(FRAMES)]
    for sub, threaded in (("a", False), ("b", True)):
        with BagWriter(tmp_path / sub / "bag", store, threaded=threaded) as w:
            w.add_topic("/img", "sensor_msgs/msg/Image")
            for i, m in enumerate(msgs):
                w.write("/img", 1000 + i, m)
    assert (tmp_path / "a/bag/bag.mcap").read_bytes() == (tmp_path / "b/bag/bag.mcap").read_bytes()
    w = BagWriter(tmp_path / "c", store, threaded=True)
    w.add_topic("/img", "sensor_msgs/msg/Image")
    w.write("/img", 1, "not a message")          # fails on the writer thread
    with pytest.raises(BagWriteError, match=r"/c: writing failed: AttributeError"):   # names the output
        w.close()


def _result_like_messages(store, seed: int = 0) -> list[tuple[str, str, int, object]]:
    """(topic, type, time, message): images of many sizes (a few bytes to more than two chunks),
    statuses with regions, in the interleaving replay writes them."""
    from pebal_ros.pipeline.messages import MessageFactory, StatusFields
    from pebal_ros.pipeline.regions import Region

    rng = np.random.default_rng(seed)
    fac = MessageFactory.for_rosbags(store)
    out = []
    for i, (h, w) in enumerate([(1, 1), (256, 512), (7, 13), (512, 1024), (1100, 1000), (3, 300), (256, 512)]):
        header = fac.header(i, 17 * i, f"cam{i % 2}")
        out.append(("/pebal/overlay", "sensor_msgs/msg/Image", 1000 + i,
                    fac.image(header, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "rgb8", fresh=True)))
        out.append(("/pebal/anomaly_score", "sensor_msgs/msg/Image", 1000 + i,
                    fac.image(header, rng.standard_normal((h, w)).astype(np.float32), "32FC1", fresh=True)))
        regions = [Region(1, 2, 3, 4, 5, 1.5, 2.5, -0.5, 0.25)] * (i % 3)
        out.append(("/pebal/status", "pebal_msgs/msg/PebalStatus", 1000 + i,
                    fac.status(header, StatusFields(w, h, -3.5, 0.01 * i, 2.0, -1.0, 12.5, 20.0, regions))))
    return out


@pytest.mark.parametrize("threaded", [False, True])
def test_result_bag_writer_same_bytes_as_rosbags_writer(tmp_path: Path, monkeypatch, threaded: bool) -> None:
    """BagWriter's MCAP chunks skip rosbags' intermediate copies (replay/mcap_chunks.py): the file
    must be byte for byte what rosbags' own writer makes, over chunk boundaries and a message
    larger than the reused chunk buffer, and read back completely."""
    from pebal_ros.replay import mcap_chunks
    from pebal_ros.replay.bag import BagWriter
    from rosbags.rosbag2 import Writer

    assert mcap_chunks.writer_class("mcap") is not Writer      # the lean writer is the one in use
    store = make_typestore()
    msgs = _result_like_messages(store)
    files = {}
    for kind in ("rosbags", "lean"):
        with monkeypatch.context() as m:
            if kind == "rosbags":
                m.setattr(mcap_chunks, "writer_class", lambda storage, compression=None: Writer)
            with BagWriter(tmp_path / kind / "bag", store, threaded=threaded) as w:
                for topic, typ, _, _ in msgs:
                    w.add_topic(topic, typ)
                for topic, _, t, msg in msgs:
                    w.write(topic, t, msg)
        files[kind] = (tmp_path / kind / "bag" / "bag.mcap").read_bytes()   # same name: metadata names it
    assert len(files["lean"]) > 3 * 2**20 and files["lean"] == files["rosbags"]
    with BagReader(tmp_path / "lean" / "bag") as reader:
        back = list(reader.messages())
    assert [(m.topic, m.timestamp) for m in back] == [(t, ts) for t, _, ts, _ in msgs]
    assert [m.data for m in back] == [bytes(store.serialize_cdr(msg, typ)) for _, typ, _, msg in msgs]


def test_deferred_writer_holds_until_release(tmp_path: Path) -> None:
    """deferred=True: write() only collects; release() hands over in order; close() flushes the
    rest; a bad message still fails close() naming the output; the file equals an inline one."""
    from pebal_ros.replay.bag import BagWriter, BagWriteError
    from pebal_ros.replay.recording import image_message

    store = make_typestore()
    msgs = [image_message(store, f, 1000 + i, "cam") for i, (f, _) in enumerate(FRAMES)]
    with BagWriter(tmp_path / "inline" / "bag", store) as w:
        w.add_topic("/img", "sensor_msgs/msg/Image")
        for i, m in enumerate(msgs):
            w.write("/img", 1000 + i, m)
    w = BagWriter(tmp_path / "deferred" / "bag", store, threaded=True, deferred=True)
    w.add_topic("/img", "sensor_msgs/msg/Image")
    for i, m in enumerate(msgs[:3]):
        w.write("/img", 1000 + i, m)
    assert w._queue.qsize() == 0 and len(w._held) == 3      # nothing handed to the thread yet
    w.release()
    assert not w._held
    for i, m in enumerate(msgs[3:], start=3):
        w.write("/img", 1000 + i, m)                        # these only reach the file at close()
    w.close()
    assert w.counts["/img"] == len(msgs)
    assert (tmp_path / "inline/bag/bag.mcap").read_bytes() == (tmp_path / "deferred/bag/bag.mcap").read_bytes()
    w = BagWriter(tmp_path / "c", store, threaded=True, deferred=True)
    w.add_topic("/img", "sensor_msgs/msg/Image")
    w.write("/img", 1, "not a message")
    with pytest.raises(BagWriteError, match=r"/c: writing failed: AttributeError"):
        w.close()


# -- what a crashed recorder leaves: a truncated MCAP and no metadata.yaml -----------------------
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.75, 0.9, 0.999])
def test_truncated_mcap_without_metadata_recovered_like_with(tmp_path: Path, fraction: float) -> None:
    bag = _write_big(tmp_path / "bag")
    data = (bag / "bag.mcap").read_bytes()
    (bag / "bag.mcap").write_bytes(data[: int(len(data) * fraction)])
    with_meta = count_messages(bag)
    with BagReader(bag) as reader:
        topics_with = {n: t.msgtype for n, t in reader.topics.items()}
    (bag / "metadata.yaml").unlink()
    without = count_messages(bag)
    with BagReader(bag) as reader:       # topics known before streaming: replay selects from them
        topics_without = {n: t.msgtype for n, t in reader.topics.items()}
        assert all(t.msgdef for t in reader.topics.values())
    assert without[0] == with_meta[0] and [str(i) for i in without[1]] == [str(i) for i in with_meta[1]]
    if sum(without[0].values()):
        assert topics_without == topics_with
    reason = without[1][0].reason
    assert reason.endswith("the file ends in the middle of a record (truncated, e.g. the recorder was killed)")


def test_truncated_real_bag_without_metadata(shared_data: Path, tmp_path: Path) -> None:
    """ROS 2's own MCAP writer (talker bag): cut inside the summary, metadata.yaml gone."""
    bag = tmp_path / "talker"
    bag.mkdir()
    data = (shared_data / "rosbag2" / "talker_mcap" / "talker.mcap").read_bytes()
    (bag / "talker_0.mcap").write_bytes(data[: int(len(data) * 0.6)])
    counts, issues = count_messages(bag)
    assert counts == {"/topic": 10, "/rosout": 10, "/parameter_events": 0}
    assert len(issues) == 1 and "truncated" in issues[0].reason


def test_cut_before_first_chunk_says_so(tmp_path: Path) -> None:
    """Nothing is complete yet: the 'no image topics' error must say why there are no topics."""
    from pebal_ros.replay.replay import ReplayError, ReplayOptions, select_topics

    bag = _write_big(tmp_path / "bag")
    data = (bag / "bag.mcap").read_bytes()
    (bag / "bag.mcap").write_bytes(data[:60])      # header record, then the cut
    (bag / "metadata.yaml").unlink()
    with BagReader(bag) as reader, pytest.raises(ReplayError) as info:
        select_topics(reader, ReplayOptions())
    assert "no topics at all (bag.mcap breaks at byte" in str(info.value)
    assert "before any topic is complete" in str(info.value) and "truncated" in str(info.value)


# -- finding bags in folders ---------------------------------------------------------------------
def test_find_bags_recursive_and_without_metadata(tmp_path: Path) -> None:
    from pebal_ros.replay.bag import FIND_DEPTH, find_bags, is_bag_folder
    from pebal_ros.replay.cli import _names, expand_bags

    root = tmp_path / "fleet"
    deep = _write(root / "2024" / "car1" / "drive_a")                        # 3 levels down
    crashed = _write(root / "2024" / "car2" / "rosbag2_2024_05_01-10_00_00")
    (crashed / "metadata.yaml").unlink()
    (crashed / "rosbag2_2024_05_01-10_00_00.mcap").rename(crashed / "rosbag2_2024_05_01-10_00_00_0.mcap")
    shutil.copy(crashed / "rosbag2_2024_05_01-10_00_00_0.mcap", crashed / "rosbag2_2024_05_01-10_00_00_1.mcap")
    loose = root / "loose"
    loose.mkdir()
    for name in ("a", "b"):                                  # two single-file bags side by side
        shutil.copy(deep / "drive_a.mcap", loose / f"{name}.mcap")
    lonely = root / "lonely"
    lonely.mkdir()
    shutil.copy(deep / "drive_a.mcap", lonely / "whatever.mcap")          # renamed single-file recording
    too_deep = root.joinpath(*[f"l{i}" for i in range(FIND_DEPTH)], "bag")
    _write(too_deep)
    (root / "2024" / "notes.txt").write_text("not a bag")

    assert is_bag_folder(crashed) and is_bag_folder(lonely) and not is_bag_folder(loose)
    bags, problems = find_bags(root)
    assert problems == []
    assert bags == [deep, crashed, lonely, loose / "a.mcap", loose / "b.mcap"]
    assert too_deep in find_bags(root, max_depth=FIND_DEPTH + 1)[0]          # the limit is what stopped it
    assert _names(bags) == ["2024/car1/drive_a", "2024/car2/rosbag2_2024_05_01-10_00_00", "lonely",
                            "loose/a", "loose/b"]
    # The split crash recording reads as one bag: both files.
    assert count_messages(crashed)[0] == {t: 2 * n for t, n in TOPICS.items()}
    (tmp_path / "empty_tree" / "x").mkdir(parents=True)
    bags, problems = expand_bags([tmp_path / "empty_tree"])
    assert bags == [] and "holds no bags up to 4 folder levels below it" in problems[0]


def test_sqlite3_without_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crashed sqlite3 recording (the database stays consistent, metadata.yaml is never written):
    read like one with metadata; and where rosbags refuses the file, plain sqlite3 lists its topics
    before any message is streamed (replay chooses its topics from that list)."""
    bag = _write(tmp_path / "bag", storage="sqlite3")
    with_meta = count_messages(bag)
    (bag / "metadata.yaml").unlink()
    assert count_messages(bag) == with_meta and with_meta[0] == TOPICS

    def refuse(self, file):
        raise RuntimeError("rosbags cannot open this")
    monkeypatch.setattr(BagReader, "_open_rosbags", refuse)
    with BagReader(bag) as reader:
        assert {n: t.msgtype for n, t in reader.topics.items()} == {
            "/camera/image_raw": "sensor_msgs/msg/Image", "/camera/image_raw/compressed":
            "sensor_msgs/msg/CompressedImage", "/camera/labels": "sensor_msgs/msg/Image"}
        assert sum(1 for _ in reader.messages()) == 18 and reader.backends == {"bag.db3": "sqlite3"}


# -- damaged metadata.yaml: the storage files still hold the recording ---------------------------
def _edit_metadata(bag: Path, edit) -> None:
    doc = yaml.safe_load((bag / "metadata.yaml").read_text())
    edit(doc["rosbag2_bagfile_information"])
    (bag / "metadata.yaml").write_text(yaml.safe_dump(doc))


def _rename(d: dict, old: str, new: str) -> None:
    d[new] = d.pop(old)


DAMAGE = {
    "topic name key renamed": (lambda i: _rename(i["topics_with_message_count"][0]["topic_metadata"], "name", "nam"),
                               "topic_metadata has no 'name'"),
    "topic type key renamed": (lambda i: _rename(i["topics_with_message_count"][1]["topic_metadata"], "type", "typ"),
                               "topic_metadata has no 'type'"),
    "topic metadata a string": (lambda i: i["topics_with_message_count"][0].update(topic_metadata="x"),
                                "topic_metadata is str 'x', expected a mapping"),
    "file list an integer": (lambda i: i.update(relative_file_paths=5),
                             "relative_file_paths is int 5, expected a list"),
    "file name null": (lambda i: i.update(relative_file_paths=[None]),
                       "relative_file_paths[0] is NoneType None, expected a string"),
    "count a string": (lambda i: i["topics_with_message_count"][0].update(message_count="many"),
                       "message_count is str 'many', expected an integer"),
    "count true": (lambda i: i.update(message_count=True), "message_count is bool True, expected an integer"),
    "count negative": (lambda i: i.update(message_count=-3), "message_count is negative (-3)"),
    "compression mode an integer": (lambda i: i.update(compression_mode=7),
                                    "compression_mode is int 7, expected a string"),
    "no bag information": (lambda i: i.clear(), "has no 'rosbag2_bagfile_information'"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_metadata_keys_and_types_read_from_storage(tmp_path: Path, damage: str) -> None:
    """A renamed key or a value of the wrong type costs the metadata, never the recording (these
    raised KeyError/TypeError/AttributeError from inside the reader, aborting a folder run)."""
    edit, expected = DAMAGE[damage]
    bag = _write(tmp_path / "bag")
    if damage == "no bag information":
        (bag / "metadata.yaml").write_text("something_else: {version: 9}\n")
    else:
        _edit_metadata(bag, edit)
    counts, issues = count_messages(bag)
    assert counts == TOPICS
    assert len(issues) == 1 and issues[0].file == "metadata.yaml"
    text = str(issues[0])
    assert expected in text and "reading the storage files" in text and "\n" not in text


def test_metadata_yaml_error_is_one_line(tmp_path: Path) -> None:
    bag = _write(tmp_path / "bag")
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information:\n  version: 9\n   bad: [\n")
    counts, issues = count_messages(bag)
    assert counts == TOPICS
    assert "not valid YAML" in str(issues[0]) and "line " in str(issues[0]) and "\n" not in str(issues[0])


def test_zstd_messages_without_metadata(tmp_path: Path) -> None:
    """The crashed-recorder case with per-message zstd: no metadata.yaml says the payloads are
    compressed, the zstd magic number does (all were undecodable before)."""
    bag = _write(tmp_path / "bag", compression="message")
    (bag / "metadata.yaml").unlink()
    counts, issues = count_messages(bag)
    assert counts == TOPICS and not issues
    assert [im.tobytes() for im in _decoded_images(bag)] == [f.tobytes() for f, _ in FRAMES]


def test_zstd_message_bomb_refused(tmp_path: Path) -> None:
    from pebal_ros.replay import bag as bagmod

    bag = _write(tmp_path / "bag", compression="message")
    limit = bagmod.MAX_MESSAGE_BYTES
    try:
        bagmod.MAX_MESSAGE_BYTES = 1000        # every 2880-byte frame now counts as too large
        with BagReader(bag) as reader:
            got = [m.topic for m in reader.messages(["/camera/image_raw"])]
            issues = [str(i) for i in reader.issues]
    finally:
        bagmod.MAX_MESSAGE_BYTES = limit
    assert got == [] and len(issues) == 6 and "more than 1,000 bytes when decompressed" in issues[0]
