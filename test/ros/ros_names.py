"""pebal_ros.ros_names against the real rclpy validators (rmw's rules): every namespace and topic the
project accepts, rclpy accepts, and every one it refuses, rclpy refuses."""
from __future__ import annotations

import itertools

from rclpy.exceptions import InvalidNamespaceException, InvalidTopicNameException
from rclpy.validate_full_topic_name import validate_full_topic_name
from rclpy.validate_namespace import validate_namespace

from pebal_ros.ros_names import absolute, namespace_problem, topic_problem

TOKENS = ["a", "_a", "A9", "a__b", "9a", "a-b", "..", "~", "{x}", "é", "", " "]
LENGTHS = [240, 244, 245, 246, 247, 248, 260]


def _names() -> list[str]:
    names = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(TOKENS, repeat=n)]
    names += ["/" + n for n in names] + [n + "/" for n in names]
    names += ["/" + "a" * (n - 1) for n in LENGTHS] + ["/" + "b/" * (n // 2) for n in LENGTHS]
    return names


def _rclpy_ok(validate, exc_type, name: str) -> bool:
    try:
        validate(name)
    except exc_type:
        return False
    return True


def test_namespaces_agree_with_rclpy():
    disagree = [n for n in _names()
                if (namespace_problem(n) is None) != _rclpy_ok(validate_namespace, InvalidNamespaceException, absolute(n))]
    assert not disagree, disagree[:20]


def test_topic_names_agree_with_rclpy():
    # the project's topics are plain names (no ~ or {} substitutions), relative or absolute
    names = [n for n in _names() if n.strip() and n.strip() != "/" and not n.strip().endswith("/")]
    disagree = [n for n in names if (topic_problem(n) is None)
                != _rclpy_ok(validate_full_topic_name, InvalidTopicNameException, absolute(n))]
    assert not disagree, disagree[:20]
