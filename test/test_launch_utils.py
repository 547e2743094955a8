"""Launch-file helpers (camera lists, topic names, RViz config rewriting), no ROS needed."""
from __future__ import annotations

from pathlib import Path

import pytest

from pebal_ros.node.launch_utils import (
    Camera,
    batched_remappings,
    camera_info_topic,
    emulate_tty,
    input_remapping,
    output_topic,
    parse_cameras,
    rviz_camera,
    rviz_config_for,
)

REPO = Path(__file__).resolve().parents[1]


def test_parse_cameras():
    assert parse_cameras("", "", "/camera/image_raw") == [Camera("", "/camera/image_raw")]
    assert parse_cameras("", "/front/", "/cam/image") == [Camera("front", "/cam/image")]
    assert parse_cameras("front:/a/image_raw, rear") == [Camera("front", "/a/image_raw"), Camera("rear", "/rear/image_raw")]
    assert parse_cameras("l:/x/img;r:/y/img", namespace="car") == [Camera("car/l", "/x/img"), Camera("car/r", "/y/img")]
    for bad, why in [("front:/a,front:/b", "unique"), (":/x", "needs a namespace"), ("9x:/a", "invalid namespace"),
                     ("a:/b//c", "invalid topic")]:
        with pytest.raises(ValueError, match=why):
            parse_cameras(bad)


def test_topics():
    assert input_remapping("/cam/image_raw", False) == ("image", "/cam/image_raw")
    assert input_remapping("/cam/image_raw", True) == ("image/compressed", "/cam/image_raw/compressed")
    assert input_remapping("/cam/image_raw/compressed", True) == ("image/compressed", "/cam/image_raw/compressed")
    assert camera_info_topic("/cam/image_raw") == "/cam/camera_info"
    assert camera_info_topic("/cam/image_raw/compressed") == "/cam/camera_info"
    assert camera_info_topic("/image") == "/camera_info"
    assert camera_info_topic("image_raw") == "camera_info"
    assert output_topic("", "overlay") == "/pebal/overlay"
    assert output_topic("/car/front/", "status") == "/car/front/pebal/status"
    with pytest.raises(ValueError):
        output_topic("", "heatmap")


def test_one_node_for_several_cameras_keeps_their_topics():
    cams = parse_cameras("l:/x/img,r:/y/image_raw", namespace="car")
    names, remaps = batched_remappings(cams, "car", compressed=True, use_camera_info=True)
    assert names == ["l", "r"]
    assert remaps == [("l/image/compressed", "/x/img/compressed"), ("l/camera_info", "/x/camera_info"),
                      ("r/image/compressed", "/y/image_raw/compressed"), ("r/camera_info", "/y/camera_info")]
    # the node in /car publishes l/pebal/... = /car/l/pebal/..., where one node per camera would
    assert [output_topic(f"car/{n}", "status") for n in names] == [output_topic(c.namespace, "status") for c in cams]
    names, remaps = batched_remappings(parse_cameras("front,rear"), "", compressed=False, use_camera_info=False)
    assert names == ["front", "rear"] and remaps == [("front/image", "/front/image_raw"), ("rear/image", "/rear/image_raw")]
    with pytest.raises(ValueError, match="not inside"):
        batched_remappings([Camera("other/front", "/a")], "car", False, False)


def test_rviz_config_rewrite():
    template = (REPO / "rviz" / "pebal.rviz").read_text()
    assert rviz_config_for(template, Camera("", "/camera/image_raw")) == template
    text = rviz_config_for(template, Camera("rear", "/rear/image_raw"))
    assert text.count("Value: /rear/pebal/") == 3 and "Value: /rear/image_raw\n" in text


def test_pseudo_terminal_only_for_a_terminal(tmp_path):
    class Tty:
        def isatty(self):
            return True

    with open(tmp_path / "launch.log", "w") as log:
        assert not emulate_tty(log, {})                                # a file: no colour codes
        assert not emulate_tty(log, {"RCUTILS_COLORIZED_OUTPUT": "1"})   # rcutils itself forces colour then
    assert emulate_tty(Tty(), {})
    assert not emulate_tty(Tty(), {"RCUTILS_COLORIZED_OUTPUT": "0"})
    assert not emulate_tty(object(), {})


def test_rviz_camera_picks_by_namespace_or_its_last_part():
    cams = parse_cameras("front:/cam_front/image_raw,rear", namespace="car")
    assert rviz_camera(cams, "") == cams[0]
    assert rviz_camera(cams, "rear") == rviz_camera(cams, "/car/rear") == Camera("car/rear", "/car/rear/image_raw")
    with pytest.raises(ValueError, match="'left' is not one of the cameras: car/front, car/rear"):
        rviz_camera(cams, "left")
    single = parse_cameras("")
    assert rviz_camera(single, "") == single[0]
    with pytest.raises(ValueError, match=r"\(no namespace\)"):
        rviz_camera(single, "rear")
