"""Type-check the rclpy node against the real rclpy of the ROS 2 install (/opt/ros/<distro>).

rclpy's Python sources are those of the installed distribution (the ROS tests run the node on the
same install), copied into a temporary ``mypy_path`` without their compiled extension; without a
ROS 2 install the test skips and says so. Message packages (sensor_msgs, diagnostic_msgs,
rcl_interfaces, pebal_msgs, ...) are generated classes mypy cannot follow; here typed ``.pyi`` stubs
are written from the rosbags typestore (the same .msg definitions), with rclpy's Python types
(``byte`` fields are ``bytes``). A snippet with deliberate mistakes proves both are resolved.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STUB_PACKAGES = ("builtin_interfaces", "std_msgs", "geometry_msgs", "sensor_msgs", "diagnostic_msgs", "rcl_interfaces", "pebal_msgs")
PRIMITIVE = {"bool": "bool", "byte": "bytes", "char": "str", "float32": "float", "float64": "float", "string": "str",
             "int8": "int", "uint8": "int", "int16": "int", "uint16": "int", "int32": "int", "uint32": "int",
             "int64": "int", "uint64": "int", "octet": "bytes"}


def real_rclpy() -> Path | None:
    """The rclpy package of the ROS 2 install the ROS tests use (test/ros_env.py finds it the same way)."""
    from ros_env import _find_distro

    distro = _find_distro()
    found = sorted(distro.glob("lib/python3*/site-packages/rclpy/node.py")) if distro is not None else []
    return found[-1].parent if found else None


def _type_expr(node, pkg: str) -> str:
    from rosbags.typesys.base import Nodetype

    kind, detail = node
    if kind == Nodetype.BASE:
        return PRIMITIVE[detail[0]]
    if kind == Nodetype.NAME:
        p, _, name = detail.split("/")
        return name if p == pkg else f"{p}.msg.{name}"
    inner, _size = detail
    if inner[0] == Nodetype.BASE:
        return "Any"   # rclpy: array.array / numpy array; accepts sequences too
    return f"list[{_type_expr(inner, pkg)}]"


def write_message_stubs(root: Path) -> None:
    from pebal_ros.pipeline.messages import default_typestore

    ts = default_typestore("humble")
    by_pkg: dict[str, list[str]] = {}
    for typename in sorted(ts.fielddefs):
        pkg, kind, name = typename.split("/")
        if pkg in STUB_PACKAGES and kind == "msg":
            by_pkg.setdefault(pkg, []).append(typename)
    for pkg, types in by_pkg.items():
        lines = ["from typing import Any, ClassVar", ""]
        lines += [f"import {p}.msg" for p in STUB_PACKAGES if p != pkg]
        for typename in types:
            consts, fields = ts.fielddefs[typename]
            name = typename.split("/")[-1]
            lines += ["", "", f"class {name}:"]
            for cname, ctype, _ in consts:
                lines.append(f"    {cname}: ClassVar[{PRIMITIVE[ctype]}]")
            args = []
            for fname, fnode in fields:
                t = _type_expr(fnode, pkg)
                lines.append(f"    {fname}: {t}")
                args.append(f"{fname}: {t} = ...")
            lines.append(f"    def __init__(self, *, {', '.join(args)}) -> None: ..." if args
                         else "    def __init__(self) -> None: ...")
        d = root / pkg / "msg"
        d.mkdir(parents=True)
        (root / pkg / "__init__.pyi").write_text("")
        (d / "__init__.pyi").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory):
    pytest.importorskip("mypy", reason="mypy not installed (pip install -e '.[test]')")
    src = real_rclpy()
    if src is None:
        pytest.skip("no ROS 2 install with rclpy (/opt/ros/<distro>/lib/python3.*/site-packages/rclpy): the node's "
                    "rclpy calls are type-checked against the real rclpy only")
    root = tmp_path_factory.mktemp("mypy")
    shutil.copytree(src, root / "path" / "rclpy", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    write_message_stubs(root / "path")
    cfg = root / "mypy.ini"
    cfg.write_text(textwrap.dedent(f"""\
        [mypy]
        python_version = 3.10
        mypy_path = {root / 'path'}
        ignore_missing_imports = True
        check_untyped_defs = True
        warn_unused_ignores = False
        # the repository's launch/ folder must not pass for the `launch` package
        namespace_packages = False
        cache_dir = {root / 'cache'}

        [mypy-rclpy.*]
        ignore_errors = True

        # big typed libraries the checked code only passes through: not worth a minute of analysis
        [mypy-torch.*,onnx.*,onnxruntime.*,scipy.*,sklearn.*,matplotlib.*]
        follow_imports = skip

        [mypy-pebal_ros.*]
        ignore_errors = True

        [mypy-pebal_ros.node.*]
        ignore_errors = False

        [mypy-pebal_ros.pipeline.*]
        ignore_errors = False
        """))
    return root, cfg


def run_mypy(cfg: Path, *targets: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(cfg), "--no-error-summary",
                           "--show-error-codes", *targets], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_node_and_pipeline_pass_mypy_against_rclpy(mypy_env):
    root, cfg = mypy_env
    snippet = root / "deliberate_errors.py"
    snippet.write_text(textwrap.dedent("""\
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from diagnostic_msgs.msg import DiagnosticStatus

        def f(node: Node) -> None:
            node.create_publisher(Image, "topic")
            name: int = node.get_name()
            Image(heigth=3)
            s = DiagnosticStatus(level=0)
        """))
    res = run_mypy(cfg, str(snippet))
    out = res.stdout + res.stderr
    # rclpy resolved: its signatures are enforced ...
    assert 'Missing positional argument "qos_profile"' in out, out
    assert "Incompatible types in assignment" in out and "str" in out, out
    # ... and the message stubs too (field names, rclpy's bytes for `byte`).
    assert 'Unexpected keyword argument "heigth"' in out, out
    assert 'Argument "level" to "DiagnosticStatus" has incompatible type "int"; expected "bytes"' in out, out

    # The node and the pipeline must type-check (the ROS tests in test/ros/ run for real instead).
    targets = [str(p) for d in ("node", "pipeline") for p in sorted((REPO / "pebal_ros" / d).glob("*.py"))]
    res = run_mypy(cfg, *targets)
    assert res.returncode == 0, res.stdout + res.stderr
