"""End-to-end replay: result bag contents against the runtime called directly, accounting of every
message, skip reasons, damaged bags, determinism, metrics against sklearn, the CLI and parallel bags."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_replay_helpers import H, W, frames, tiny_onnx

from pebal_ros.replay.bag import BagReader, BagWriter, make_typestore
from pebal_ros.replay.recording import compressed_message, image_message, write_recording
from pebal_ros.replay.replay import ReplayError, ReplayOptions, replay_bag

THR = -3.9
OUT_TOPICS = ["/pebal/anomaly_mask", "/pebal/anomaly_score", "/pebal/overlay", "/pebal/semantic",
              "/pebal/semantic_color", "/pebal/status"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def runtime(model: Path):
    from pebal_ros.runtime import load_runtime
    return load_runtime(model, device="cpu")


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 frames on a raw topic with a label topic."""
    path = tmp_path_factory.mktemp("bags") / "drive"
    write_recording(path, frames(10))
    return path


def _read(bag: Path) -> dict[str, list]:
    out: dict[str, list] = {}
    with BagReader(bag) as reader:
        store = make_typestore(reader.topics.values())
        for m in reader.messages():
            out.setdefault(m.topic, []).append((m.timestamp, store.deserialize_cdr(m.data, m.msgtype)))
    return out


def _opts(**kw) -> ReplayOptions:
    kw.setdefault("threshold", THR)
    kw.setdefault("progress", False)
    return ReplayOptions(**kw)


def test_result_bag_matches_direct_inference(drive: Path, runtime, tmp_path: Path) -> None:
    res = replay_bag(drive, runtime, tmp_path / "out", _opts())
    assert res.exit_code == 0
    out = _read(res.result_bag)
    assert sorted(out) == OUT_TOPICS
    inputs = _read(drive)["/camera/image_raw"]
    for topic in OUT_TOPICS:
        assert len(out[topic]) == 10
        # Receive times and headers copied from the input frames.
        assert [t for t, _ in out[topic]] == [t for t, _ in inputs]
        assert [(m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) for _, m in out[topic]] == \
               [(m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id) for _, m in inputs]
    for i, (img, _) in enumerate(frames(10)):
        direct = runtime.infer(img, THR)
        sem = out["/pebal/semantic"][i][1]
        assert sem.encoding == "mono8" and np.array_equal(sem.data.reshape(H, W), direct.semantic)
        score = out["/pebal/anomaly_score"][i][1]
        assert score.encoding == "32FC1"
        np.testing.assert_allclose(score.data.view(np.float32).reshape(H, W), direct.score, rtol=0, atol=1e-6)
        mask = out["/pebal/anomaly_mask"][i][1].data.reshape(H, W)
        assert np.array_equal(mask, direct.mask * 255)
        st = out["/pebal/status"][i][1]
        assert st.anomaly_fraction == pytest.approx(direct.mask.mean(), abs=1e-6)
        assert st.threshold == pytest.approx(THR)
    det = res.summary["deterministic"]
    assert det["topics"][0] | {"skip_reasons": {}} == {
        "topic": "/camera/image_raw", "msgtype": "sensor_msgs/msg/Image", "declared": 10, "read": 10,
        "processed": 10, "skipped": 0, "skip_reasons": {}}
    assert det["label_topic"] == "/camera/labels"
    for name in ("report.html", "summary.json", "frames.csv", "anomaly_over_time.png", "contact_sheet.png"):
        assert (res.report_dir / name).is_file(), name


def test_status_schema_embedded_for_foxglove(drive: Path, runtime, tmp_path: Path) -> None:
    """A reader that knows nothing about pebal_msgs decodes status from the schema in the MCAP."""
    from mcap.reader import make_reader
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    res = replay_bag(drive, runtime, tmp_path / "out", _opts())
    mcap_file = next(res.result_bag.glob("*.mcap"))
    with mcap_file.open("rb") as fh:
        reader = make_reader(fh)
        schemas = {s.name: s for s in reader.get_summary().schemas.values()}
        assert schemas["pebal_msgs/msg/PebalStatus"].encoding == "ros2msg"
        text = schemas["pebal_msgs/msg/PebalStatus"].data.decode()
        store = get_typestore(Stores.ROS2_JAZZY)
        # ros2msg schema: the main definition, then "=====" separated dependencies.
        types: dict = {}
        parts = text.split("=" * 80 + "\n")
        types.update(get_types_from_msg(parts[0], "pebal_msgs/msg/PebalStatus"))
        for part in parts[1:]:
            head, _, body = part.partition("\n")
            name = head.removeprefix("MSG: ").strip()
            if name.startswith("pebal_msgs"):
                types.update(get_types_from_msg(body, name.replace("pebal_msgs/", "pebal_msgs/msg/")
                                                if "/msg/" not in name else name))
        store.register(types)
        msgs = [store.deserialize_cdr(m.data, "pebal_msgs/msg/PebalStatus")
                for _, ch, m in reader.iter_messages(topics=["/pebal/status"])]
    assert len(msgs) == 10 and all(0 <= m.anomaly_fraction <= 1 for m in msgs)


def _bad_frames_bag(path: Path) -> None:
    """6 frames on a compressed topic: 2 fine, 1 corrupt payload, 1 truncated PNG, 1 empty, 1 fine;
    plus a raw topic with one good frame, one unsupported encoding and one wrong step."""
    store = make_typestore()
    imgs = [f for f, _ in frames(6)]
    with BagWriter(path, store) as bag:
        bag.add_topic("/cam/compressed", "sensor_msgs/msg/CompressedImage")
        bag.add_topic("/raw/image", "sensor_msgs/msg/Image")
        bag.add_topic("/imu", "std_msgs/msg/String")
        t0 = 1_700_000_000_000_000_000
        for i, img in enumerate(imgs):
            m = compressed_message(store, img, t0 + i, "cam")
            if i == 2:
                m.data = np.frombuffer(b"\x00garbage" * 10, np.uint8)
            elif i == 3:
                m.data = m.data[: len(m.data) // 3]
            elif i == 4:
                m.data = np.zeros(0, np.uint8)
            bag.write("/cam/compressed", t0 + i, m)
        bag.write("/raw/image", t0, image_message(store, imgs[0], t0, "raw"))
        bag.write("/raw/image", t0 + 1, image_message(store, imgs[1][..., 0].astype(np.uint16) * 250, t0 + 1,
                                                      "raw", encoding="64FC7"))
        bad = image_message(store, imgs[2], t0 + 2, "raw")
        bad.step = W * 3 + 7
        bag.write("/raw/image", t0 + 2, bad)
        String = store.types["std_msgs/msg/String"]
        bag.write("/imu", t0, String(data="not an image"))


def test_skipped_frames_have_reasons_and_every_message_counts(runtime, tmp_path: Path) -> None:
    _bad_frames_bag(tmp_path / "bad")
    res = replay_bag(tmp_path / "bad", runtime, tmp_path / "out", _opts())
    det = res.summary["deterministic"]
    topics = {t["topic"]: t for t in det["topics"]}
    cam = topics["/cam/compressed"]
    assert (cam["read"], cam["processed"], cam["skipped"]) == (6, 3, 3)
    reasons = " | ".join(cam["skip_reasons"])
    assert "CorruptCompressedImageError" in reasons or "EmptyImageError" in reasons
    raw = topics["/raw/image"]
    assert (raw["read"], raw["processed"], raw["skipped"]) == (3, 1, 2)
    assert sum(raw["skip_reasons"].values()) == 2
    assert det["other_topics"] == {"/imu": 1}
    assert det["status"] == "partial" and res.exit_code == 0
    total_in = 6 + 3 + 1
    assert sum(t["read"] for t in det["topics"]) + sum(det["other_topics"].values()) == total_in
    assert sum(n for t in topics.values() for n in t["skip_reasons"].values()) == 5
    html = (res.report_dir / "report.html").read_text()
    assert "skip reasons" in html and "/imu" in html


def test_truncated_bag_partial_replay(runtime, tmp_path: Path) -> None:
    # 40 x 74 kB: several 1 MiB chunks, so the cut leaves whole chunks intact.
    big = [(f, None) for f, _ in frames(40, size=(2 * H, 2 * W))]
    write_recording(tmp_path / "bag", big, label_topic=None)
    data = (tmp_path / "bag" / "bag.mcap").read_bytes()
    (tmp_path / "bag" / "bag.mcap").write_bytes(data[: len(data) * 2 // 3])
    res = replay_bag(tmp_path / "bag", runtime, tmp_path / "out", _opts())
    det = res.summary["deterministic"]
    assert 0 < det["frames"]["processed"] < 40 and res.exit_code == 0
    assert det["declared_but_unread"] == {"/camera/image_raw": 40 - det["frames"]["read"]}
    assert det["issues"] and "at byte" in det["issues"][0]
    assert det["status"] == "partial"


def test_nothing_to_replay(runtime, tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ReplayError, match=r"no image topics.*/topic \[std_msgs/msg/String\]"):
        replay_bag(shared_data / "rosbag2" / "talker_mcap", runtime, tmp_path / "o1", _opts())
    with pytest.raises(ReplayError, match="not an image type"):
        replay_bag(shared_data / "rosbag2" / "cdr_test_mcap", runtime, tmp_path / "o2",
                   _opts(topics=["/test_topic"]))
    with pytest.raises(ReplayError, match="is not in"):
        replay_bag(shared_data / "rosbag2" / "talker_sqlite3", runtime, tmp_path / "o3",
                   _opts(topics=["/camera/image_raw"]))


def test_fully_corrupt_bag_fails(runtime, tmp_path: Path) -> None:
    write_recording(tmp_path / "bag", frames(3))
    (tmp_path / "bag" / "bag.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    res = replay_bag(tmp_path / "bag", runtime, tmp_path / "out", _opts())
    det = res.summary["deterministic"]
    assert res.exit_code == 1 and det["status"] == "failed"
    assert det["declared_but_unread"]["/camera/image_raw"] == 3 and det["issues"]


def _contents(bag: Path, drop_latency: bool) -> list:
    rows = []
    for topic, msgs in sorted(_read(bag).items()):
        for t, m in msgs:
            if topic.endswith("status") and drop_latency:
                m.inference_latency_ms = m.end_to_end_latency_ms = 0.0
            rows.append((topic, t, repr(m)))
    return rows


def test_deterministic(drive: Path, runtime, tmp_path: Path) -> None:
    a = replay_bag(drive, runtime, tmp_path / "a", _opts(reproducible=True))
    b = replay_bag(drive, runtime, tmp_path / "b", _opts(reproducible=True))
    assert (a.result_bag / "result_bag.mcap").read_bytes() == (b.result_bag / "result_bag.mcap").read_bytes()
    da, db = (dict(r.summary["deterministic"]) for r in (a, b))
    da.pop("result_bag"), db.pop("result_bag")
    assert json.dumps(da, sort_keys=True) == json.dumps(db, sort_keys=True)
    # Without --reproducible only the two measured latencies in the status messages differ.
    c = replay_bag(drive, runtime, tmp_path / "c", _opts())
    assert _contents(c.result_bag, True) == _contents(a.result_bag, False)


def test_metrics_against_sklearn(drive: Path, runtime, tmp_path: Path) -> None:
    """AUROC/AP/FPR95/mIoU from the report vs an independent sklearn computation on the result bag."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    res = replay_bag(drive, runtime, tmp_path / "out", _opts())
    gt = res.summary["deterministic"]["ground_truth"]
    scores = np.concatenate([m.data.view(np.float32) for _, m in _read(res.result_bag)["/pebal/anomaly_score"]])
    masks = np.concatenate([m.data for _, m in _read(res.result_bag)["/pebal/anomaly_mask"]]) > 0
    labels = np.concatenate([lab.reshape(-1) for _, lab in frames(10)])
    v = labels != 255
    s, y, pm = scores[v], labels[v], masks[v]
    fpr, tpr, _ = roc_curve(y, s)
    assert gt["frames_with_labels"] == 10 and gt["frames_without_labels"] == 0
    assert gt["metrics"]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=2e-3)
    assert gt["metrics"]["ap"] == pytest.approx(average_precision_score(y, s), abs=2e-3)
    assert gt["metrics"]["fpr95"] == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=5e-3)
    iou1 = (pm & (y == 1)).sum() / (pm | (y == 1)).sum()
    iou0 = (~pm & (y == 0)).sum() / (~pm | (y == 0)).sum()
    assert gt["anomaly_iou"] == pytest.approx(iou1, abs=1e-9)
    assert gt["miou"] == pytest.approx((iou0 + iou1) / 2, abs=1e-9)
    assert (res.report_dir / "roc.png").is_file() and (res.report_dir / "pr.png").is_file()


def test_label_folder_matching(drive: Path, runtime, tmp_path: Path) -> None:
    import cv2

    ref = replay_bag(drive, runtime, tmp_path / "ref", _opts()).summary["deterministic"]
    stamps = [t for t, _ in _read(drive)["/camera/image_raw"]]
    for match, names in (("stamp", [str(s) for s in stamps]), ("name", [f"frame_{i:04d}" for i in range(10)])):
        folder = tmp_path / f"labels_{match}"
        folder.mkdir()
        for name, (_, lab) in zip(names, frames(10)):
            cv2.imwrite(str(folder / f"{name}.png"), lab)
        cv2.imwrite(str(folder / ("9" * 19 + ".png" if match == "stamp" else "frame_0099.png")), frames(1)[0][1])
        res = replay_bag(drive, runtime, tmp_path / f"o_{match}", _opts(labels_dir=folder, label_topic=None))
        gt = res.summary["deterministic"]["ground_truth"]
        assert f"matched by {match}" in gt["source"] and gt["frames_with_labels"] == 10
        assert gt["metrics"] == ref["ground_truth"]["metrics"]


@pytest.mark.slow
def test_cli_parallel_folder(drive: Path, model: Path, tmp_path: Path) -> None:
    """A folder of bags in 2 worker processes (spawn: each imports and loads the model, ~10 s)."""
    from pebal_ros.cli import main

    second = tmp_path / "bags" / "second"
    write_recording(second, frames(4), label_topic=None, compressed_topic="/camera/image_raw/compressed",
                    topic=None)
    shutil.copytree(drive, tmp_path / "bags" / "first")
    (tmp_path / "bags" / "README.txt").write_text("not a bag, ignored by folder expansion")
    common = ["--model", str(model), "--threshold", str(THR), "--no-progress"]
    assert main(["replay", str(tmp_path / "bags"), "--out", str(tmp_path / "fleet"), "-j", "2", *common]) == 0
    for name in ("first", "second"):
        assert (tmp_path / "fleet" / name / "report" / "report.html").is_file()
        assert (tmp_path / "fleet" / name / "result_bag" / "metadata.yaml").is_file()
    index = json.loads((tmp_path / "fleet" / "summary.json").read_text())
    assert [Path(r["bag"]).name for r in index] == ["first", "second"]
    assert "second" in (tmp_path / "fleet" / "index.html").read_text()


def test_cli_single_and_errors(drive: Path, model: Path, tmp_path: Path, capsys) -> None:
    from pebal_ros.cli import main

    common = ["--model", str(model), "--threshold", str(THR), "--no-progress"]
    assert main(["replay", str(drive), "--out", str(tmp_path / "one"), *common]) == 0
    assert "report.html" in capsys.readouterr().out
    # Errors: not a bag, missing path -> non-zero with a message naming the problem.
    (tmp_path / "x.txt").write_text("hello")
    assert main(["replay", str(tmp_path / "x.txt"), "--out", str(tmp_path / "o"), *common]) == 1
    assert "not a rosbag2 recording" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["replay", str(drive), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "no.onnx")]) == 2
    assert "cannot load the model" in capsys.readouterr().err
    # Existing output is not overwritten silently.
    assert main(["replay", str(drive), "--out", str(tmp_path / "one"), *common]) == 1
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("storage,compression", [("sqlite3", "message"), ("mcap", "file")])
def test_replay_other_storage(runtime, tmp_path: Path, storage: str, compression: str) -> None:
    write_recording(tmp_path / "bag", frames(4), storage=storage, compression=compression)
    res = replay_bag(tmp_path / "bag", runtime, tmp_path / "out", _opts())
    det = res.summary["deterministic"]
    assert det["frames"] == {"read": 4, "processed": 4, "skipped": 0} and det["status"] == "ok"
    assert det["ground_truth"]["frames_with_labels"] == 4


def test_report_without_labels_has_no_ground_truth_rows(drive: Path, runtime, tmp_path: Path) -> None:
    """No labels given: no ground-truth timing stage, no accuracy section; with labels both appear."""
    plain = replay_bag(drive, runtime, tmp_path / "plain", _opts(label_topic=None))
    stages = plain.summary["timing"]["stages_ms_per_frame"]
    assert "ground_truth_metrics" not in stages and "bag_read_and_other" in stages
    page = (plain.report_dir / "report.html").read_text()
    assert "ground truth" not in page.lower() and "Accuracy against" not in page
    labelled = replay_bag(drive, runtime, tmp_path / "labelled", _opts())
    assert "ground_truth_metrics" in labelled.summary["timing"]["stages_ms_per_frame"]
    assert "Accuracy against ground truth" in (labelled.report_dir / "report.html").read_text()


def test_folder_run_survives_damaged_metadata_and_zstd_without_metadata(model: Path, tmp_path: Path, capsys,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A renamed metadata key used to raise KeyError and abort the whole folder run; an intact MCAP
    with zstd-compressed messages and no metadata.yaml gave 0 of 8 frames. Now each bag is replayed
    from what it holds, and a bug met on one bag fails that bag alone, in one line."""
    import yaml

    from pebal_ros.cli import main
    from pebal_ros.replay import replay as replay_mod

    bags = tmp_path / "bags"
    write_recording(bags / "a_renamed_key", frames(4))
    meta = bags / "a_renamed_key" / "metadata.yaml"
    doc = yaml.safe_load(meta.read_text())
    tm = doc["rosbag2_bagfile_information"]["topics_with_message_count"][0]["topic_metadata"]
    tm["nam"] = tm.pop("name")
    meta.write_text(yaml.safe_dump(doc))
    write_recording(bags / "b_crashed_zstd", frames(8), compression="message", label_topic=None)
    (bags / "b_crashed_zstd" / "metadata.yaml").unlink()
    write_recording(bags / "c_plain", frames(3))
    common = ["--model", str(model), "--threshold", str(THR), "--no-progress"]
    assert main(["replay", str(bags), "--out", str(tmp_path / "out"), *common]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    index = {Path(r["bag"]).name: r for r in json.loads((tmp_path / "out" / "summary.json").read_text())}
    assert index["a_renamed_key"]["status_text"].startswith("4 of 4 frames processed")
    assert any("has no 'name'" in i for i in index["a_renamed_key"]["issues"])
    assert index["b_crashed_zstd"]["status_text"] == "8 of 8 frames processed"
    assert index["c_plain"]["status_text"] == "3 of 3 frames processed"

    real = replay_mod.replay_bag

    def buggy(bag, *a, **kw):      # a bug that only one bag meets
        if Path(bag).name == "a_renamed_key":
            raise KeyError("name")
        return real(bag, *a, **kw)

    monkeypatch.setattr("pebal_ros.replay.cli.replay_bag", buggy)
    assert main(["replay", str(bags), "--out", str(tmp_path / "out2"), *common]) == 1
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "a_renamed_key" in x)
    assert "KeyError: 'name'" in line and "a bug in pebal" in line and "Traceback" not in err
    index = {Path(r["bag"]).name: r for r in json.loads((tmp_path / "out2" / "summary.json").read_text())}
    assert index["b_crashed_zstd"]["exit_code"] == 0 and index["c_plain"]["exit_code"] == 0


def test_labelled_anomalies_found_and_missed_in_words(drive: Path, runtime, tmp_path: Path) -> None:
    """Each labelled anomaly (one square per frame here) is counted as detected / partly / missed
    from the result bag's own masks, the report says so in words, and the contact sheets outline
    the labels (the report used to show AP 0.5 % and nothing else while the animal went unflagged)."""
    import cv2

    from pebal_ros.replay.report import TRUTH_COLOR

    res = replay_bag(drive, runtime, tmp_path / "out", _opts())
    gt = res.summary["deterministic"]["ground_truth"]
    masks = [m.data.reshape(m.height, m.width) > 0 for _, m in _read(res.result_bag)["/pebal/anomaly_mask"]]
    objects = [(i, int((lab == 1).sum()), int((masks[i] & (lab == 1)).sum()))
               for i, (_, lab) in enumerate(frames(10)) if (lab == 1).any()]
    obj = gt["objects"]
    assert obj["labelled"] == len(objects) == 7
    assert obj["missed"] == sum(f == 0 for _, _, f in objects)
    assert obj["detected"] == sum(f >= 0.5 * a for _, a, f in objects)
    assert obj["partly"] == len(objects) - obj["missed"] - obj["detected"]
    labels = np.concatenate([lab.reshape(-1) for _, lab in frames(10)])
    flagged = np.concatenate([m.reshape(-1) for m in masks])
    assert gt["flagged_share"]["anomaly_pixels"] == pytest.approx(flagged[labels == 1].mean())
    assert gt["flagged_share"]["inlier_pixels"] == pytest.approx(flagged[labels == 0].mean())
    sheet = cv2.cvtColor(cv2.imread(str(res.report_dir / "contact_sheet.png")), cv2.COLOR_BGR2RGB)
    assert (sheet == TRUTH_COLOR).all(-1).sum() > 0            # the labels are outlined

    # Nothing can pass a threshold of 100: every labelled square is missed, and named.
    blind = replay_bag(drive, runtime, tmp_path / "blind", _opts(threshold=100.0))
    obj = blind.summary["deterministic"]["ground_truth"]["objects"]
    assert (obj["labelled"], obj["detected"], obj["partly"], obj["missed"]) == (7, 0, 0, 7)
    page = (blind.report_dir / "report.html").read_text()
    assert "The detector found none of the labelled anomalies." in page
    first = f"missed: the labelled anomaly in frame /camera/image_raw #1 (0 of {objects[0][1]} pixels flagged)"
    assert objects[0][0] == 1 and first in page
    misses = cv2.cvtColor(cv2.imread(str(blind.report_dir / "misses.png")), cv2.COLOR_BGR2RGB)
    assert (misses == TRUTH_COLOR).all(-1).sum() > 0 and "misses.png" in page
