"""ROS 2 name rules for the namespaces and topics pebal_ros takes from users, without ROS.

The rules are rmw's (``rmw_validate_namespace``, ``rmw_validate_full_topic_name``): tokens of
letters, digits and '_' separated by single '/', no token starting with a digit, at most 245
characters for a namespace and 247 for a topic. test/ros/ros_names.py checks these functions against
the real rclpy validators. Users may write a namespace relative ("front") or absolute ("/front"),
with or without a trailing '/': both mean "/front" here, as they do to the launch file.
"""
from __future__ import annotations

NAMESPACE_MAX_LENGTH = 245      # RMW_NAMESPACE_MAX_LENGTH: RMW_TOPIC_MAX_NAME_LENGTH - 2
TOPIC_MAX_LENGTH = 247          # RMW_TOPIC_MAX_NAME_LENGTH: 255 - 8 reserved for DDS prefixes
RULE = "ROS names are tokens of letters, digits and '_' separated by single '/', no token starting with a digit"


def _problem(name: str, what: str, max_length: int) -> str | None:
    """Why a fully qualified ``name`` breaks the rules, or None."""
    if not name.startswith("/"):
        return f"a {what} must be absolute"
    if name != "/" and name.endswith("/"):
        return f"a {what} must not end with '/'"
    bad = next((c for c in name if not (c.isascii() and (c.isalnum() or c in "_/"))), None)
    if bad is not None:
        return f"{bad!r} is not allowed"
    if "//" in name:
        return "it repeats '/'"
    digit = next((t for t in name.split("/") if t[:1].isdigit()), None)
    if digit is not None:
        return f"its token {digit!r} starts with a digit"
    if len(name) > max_length:
        return f"it is {len(name)} characters long, more than the {max_length} ROS allows"
    return None


def absolute(name: str) -> str:
    """'front', '/front' and 'front/' -> '/front'; '' and '/' -> '/' (nothing else is changed)."""
    name = name.strip()
    if name.endswith("/") and name != "/":
        name = name[:-1]
    return name if name.startswith("/") else "/" + name


def namespace_problem(namespace: str) -> str | None:
    """Why ``namespace`` (relative or absolute) is not a valid ROS namespace, or None."""
    return _problem(absolute(namespace), "namespace", NAMESPACE_MAX_LENGTH)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` (relative or absolute, without ~ or {} substitutions) is not a valid topic name."""
    if not topic.strip() or topic.strip() == "/":
        return "a topic name must not be empty"
    if topic.strip().endswith("/"):
        return "a topic name must not end with '/'"
    return _problem(absolute(topic), "topic name", TOPIC_MAX_LENGTH)


def check_namespace(namespace: str, what: str = "namespace") -> str:
    """``namespace`` without its leading and trailing '/' ("" for the root), or ValueError (one line)."""
    problem = namespace_problem(namespace)
    if problem:
        raise ValueError(f"invalid {what} {namespace!r}: {problem} ({RULE})")
    return absolute(namespace).strip("/")


def check_topic(topic: str, what: str = "topic name") -> str:
    """``topic`` stripped of surrounding blanks, or ValueError (one line)."""
    problem = topic_problem(topic)
    if problem:
        raise ValueError(f"invalid {what} {topic!r}: {problem} ({RULE})")
    return topic.strip()
