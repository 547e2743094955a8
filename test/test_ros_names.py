"""ROS name rules where pebal_ros takes namespaces and topics from users: replay's --namespace, the
node's cameras parameter, the launch file's namespace and camera names. test/ros/ros_names.py checks
the same rules against the real rclpy validators."""
from __future__ import annotations

import pytest

from pebal_ros.ros_names import absolute, check_namespace, check_topic, namespace_problem, topic_problem

GOOD_NAMESPACES = ["", "/", "front", "/front", "front/", "/vehicle/front_left", "_private", "a__b", "Cam9/x_1",
                   "a" * 244]
BAD_NAMESPACES = {"../../x": "'.' is not allowed", "front-left": "'-' is not allowed", "a//b": "repeats '/'",
                  "9cam": "'9cam' starts with a digit", "car/2nd": "'2nd' starts with a digit",
                  "~/x": "'~' is not allowed", "{ns}": "'{' is not allowed", "caméra": "'é' is not allowed",
                  "a b": "' ' is not allowed", "a" * 245: "246 characters long, more than the 245"}


def test_namespace_rules():
    for ns in GOOD_NAMESPACES:
        assert namespace_problem(ns) is None, ns
    for ns, why in BAD_NAMESPACES.items():
        assert why in (namespace_problem(ns) or ""), (ns, namespace_problem(ns))
    assert absolute("front/") == "/front" and absolute("") == "/" and check_namespace("/car/front/") == "car/front"
    with pytest.raises(ValueError) as exc:
        check_namespace("../../x", "--namespace")
    assert str(exc.value).startswith("invalid --namespace '../../x': '.' is not allowed") and "\n" not in str(exc.value)


def test_topic_rules():
    for topic in ("/camera/image_raw", "image_raw", "/a_/b", "/" + "t" * 246):
        assert topic_problem(topic) is None, topic
    for topic, why in {"": "empty", "/": "empty", "/cam/": "end with '/'", "/a//b": "repeats '/'",
                       "/cam/1st": "starts with a digit", "/a/~": "'~' is not allowed",
                       "/" + "t" * 247: "more than the 247"}.items():
        assert why in (topic_problem(topic) or ""), (topic, topic_problem(topic))
    assert check_topic(" /cam/image ") == "/cam/image"


def test_replay_refuses_a_bad_namespace_in_one_line(tmp_path, capsys):
    from pebal_ros.cli import main

    for ns, why in (("../../x", "'.' is not allowed"), ("a" * 240, "output topic")):
        assert main(["replay", str(tmp_path), "--out", str(tmp_path / "o"), "--namespace", ns]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("pebal replay: invalid ") and why in err and "\n" not in err, err
    assert not (tmp_path / "o").exists()


def test_node_cameras_and_launch_names_follow_the_rules():
    from pebal_ros.node.launch_utils import Camera, parse_cameras
    from pebal_ros.node.params import validate

    assert validate("cameras", ["front", "_rear", "car/left"]) is None
    for bad in (["../../x"], ["front", "9x"], ["a//b"]):
        reason = validate("cameras", bad)
        assert reason and reason.startswith("cameras has invalid namespace(s)") and "ROS names" in reason, reason
    assert parse_cameras("", "_car", "/cam/image") == [Camera("_car", "/cam/image")]
    for cameras, namespace, topic, why in (("", "../../x", "/c/image", "invalid namespace '../../x'"),
                                           ("front:/a/b", "../x", "/c", "invalid namespace '../x'"),
                                           ("", "car", "/cam/", "end with '/'"),
                                           ("front:/a/image", "a" * 240, "/c", "more than the 245")):
        with pytest.raises(ValueError, match=why):
            parse_cameras(cameras, namespace, topic)
