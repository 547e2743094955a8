"""Report building blocks: percentiles, top-k selection, topic naming, label folder matching rules."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pebal_ros.replay import report as rep
from pebal_ros.replay.groundtruth import Accuracy, LabelFolder, LabelTopicMatcher
from pebal_ros.replay.replay import _output_prefix


def test_latency_stats_match_numpy() -> None:
    v = np.random.default_rng(0).gamma(2.0, 10.0, 1000)
    s = rep.latency_stats(list(v))
    assert s["p50"] == pytest.approx(np.median(v)) and s["p99"] == pytest.approx(np.quantile(v, 0.99))
    assert s["max"] == v.max() and rep.latency_stats([]) == {}


def test_topk_keeps_largest_in_order_ties_to_earliest() -> None:
    top = rep.TopK(k=3)
    for i, f in enumerate([0.1, 0.5, 0.5, 0.05, 0.9, 0.2]):
        if top.wants(f):
            top.add(f, f"#{i}")
    assert top.items() == [(0.9, "#4"), (0.5, "#1"), (0.5, "#2")]


def test_output_topics_follow_the_launch_file() -> None:
    assert _output_prefix("", "/camera/image_raw", False) == "/pebal"
    assert _output_prefix("front", "/camera/image_raw", False) == "/front/pebal"
    assert _output_prefix("", "/front/image_raw", True) == "/front/pebal"
    assert _output_prefix("car", "/front/image_raw/compressed", True) == "/car/front/image_raw/pebal"


def test_label_folder_auto_matching(tmp_path: Path) -> None:
    lab = np.zeros((4, 4), np.uint8)
    for folder, names, expect in (("a", ["1700000000123456789", "1700000000223456789"], "stamp"),
                                  ("b", ["1700000000_5", "1700000001_000000007"], "stamp"),
                                  ("c", ["frame_3", "frame_10"], "name"),
                                  ("d", ["left", "right"], "index")):
        (tmp_path / folder).mkdir()
        for n in names:
            cv2.imwrite(str(tmp_path / folder / f"{n}.png"), lab)
        assert LabelFolder(tmp_path / folder).match == expect, folder
    f = LabelFolder(tmp_path / "b")
    assert f.get(0, 1_700_000_000_500_000_000) is not None and f.get(0, 1_700_000_000_000_000_005) is None
    assert LabelFolder(tmp_path / "c").get(10, None) is not None
    with pytest.raises(ValueError, match="no .png"):
        (tmp_path / "e").mkdir()
        LabelFolder(tmp_path / "e")


def test_label_topic_matcher_either_order_and_window() -> None:
    acc = Accuracy("anomaly")
    m = LabelTopicMatcher(acc, window=2)

    class Out:
        score = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
        mask = (score > 0.5).astype(np.uint8)
        semantic = np.zeros((4, 4), np.uint8)

    label = (Out.score > 0.7).astype(np.uint8)
    m.frame(("cam", 1), Out)             # frame first
    m.label(("cam", 1), label)
    m.label(("cam", 2), label)           # label first, used by two camera topics
    m.frame(("cam", 2), Out)
    m.frame(("cam", 2), Out)
    m.frame(("other", 2), Out)           # different frame_id: no label
    for k in range(3, 6):                # labels nobody uses fall out of the window
        m.label(("cam", k), label)
    m.finish()
    assert acc.frames == 3 and m.frames_without_label == 1 and m.labels_without_frame == 3
    assert acc.compute()["metrics"]["auroc"] == pytest.approx(1.0)


def test_one_frame_topic_is_visible_over_time() -> None:
    """A topic with a single processed frame is a zero-length line unless drawn with a marker."""
    records = [rep.FrameRecord("/front", i, 1_000_000_000 + i * 100_000_000, anomaly_fraction=0.01 * (i % 3))
               for i in range(20)]
    records.append(rep.FrameRecord("/rear", 0, 1_500_000_000, anomaly_fraction=0.02))
    records += [rep.FrameRecord("/dense", i, 1_000_000_000 + i * 1_000_000) for i in range(rep.MARKERS_UP_TO + 1)]
    fig = rep.anomaly_over_time_figure(records)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    rear = lines["/rear (1 frame)"]
    assert list(rear.get_xdata()) == [0.5] and list(rear.get_ydata()) == [2.0]
    assert rear.get_marker() not in (None, "None", "", " ") and rear.get_markersize() > 0
    assert lines["/front"].get_marker() not in (None, "None", "", " ")
    assert lines["/dense"].get_marker() in (None, "None", "", " ")        # a dense line needs none
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_contact_sheet_captions_fit_their_thumbnail() -> None:
    import cv2

    for title in ("/a #1", "/front_left/camera/image_raw/compressed #12345", "x" * 200):
        text, scale = rep._fit_caption(title + "  3.80%", 312)
        assert cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] <= 312
        assert text.endswith("3.80%") and scale >= 0.32
    assert rep._fit_caption("/a #1  3.80%", 312) == ("/a #1  3.80%", 0.45)      # short: unchanged


def test_words_do_not_call_partly_found_objects_none_found() -> None:
    """"found none" only when no pixel of any labelled anomaly was flagged; objects found in part
    (the road demo's rockets: their bases) are said to be found in part."""
    acc = Accuracy("anomaly")
    label = np.zeros((20, 40), np.uint8)
    label[2:12, 2:12] = 1
    label[2:12, 20:30] = 1
    mask = np.zeros_like(label)
    mask[2:4, 2:12] = 1                                  # 20 of 100 pixels of the first object
    acc.update(np.where(mask == 1, 1.0, -1.0).astype(np.float32), mask, np.zeros_like(label), label, "f")
    words = rep.ground_truth_words(acc.compute())
    assert "No labelled anomaly had 50 % of its pixels flagged; 1 of 2 were found in part." in words
    assert "The detector found none of the labelled anomalies." not in words
    blind = Accuracy("anomaly")
    blind.update(np.full(label.shape, -1.0, np.float32), np.zeros_like(label), np.zeros_like(label), label, "f")
    assert "The detector found none of the labelled anomalies." in rep.ground_truth_words(blind.compute())
