"""The ROS 2 package, checked without ROS 2: manifests against the format-3 schema, the .msg files
with ROS's own parser (rosidl_adapter), declared dependencies against the imports, the colcon
install layout that setup.py produces, and the launch file's logic with stand-in launch classes.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import py_compile
import shutil
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = [REPO / "package.xml", REPO / "msg" / "package.xml"]
XSD_CANDIDATES = [Path("/usr/share/ament_xmllint/xml-catalog/download.ros.org/schema/package_format3.xsd")]
ROSIDL_DIST = Path("/usr/lib/python3/dist-packages")   # Debian's python3-rosidl


# --- package.xml ---------------------------------------------------------------------------

def _xsd() -> Path:
    for p in XSD_CANDIDATES:
        if p.is_file():
            return p
    pytest.skip("package_format3.xsd not found: install Debian's python3-ament-xmllint (apt-get install "
                "python3-ament-xmllint libxml2-utils)")


@pytest.mark.parametrize("manifest", MANIFESTS, ids=["pebal_ros", "pebal_msgs"])
def test_manifest_validates_against_format3_schema(manifest):
    xsd = _xsd()
    if shutil.which("xmllint") is None:
        pytest.skip("xmllint not found: apt-get install libxml2-utils")
    res = subprocess.run(["xmllint", "--noout", "--schema", str(xsd), str(manifest)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "validates" in res.stderr


def test_schema_check_can_fail(tmp_path):
    """The schema check is real: a manifest with an unknown element is rejected."""
    xsd = _xsd()
    if shutil.which("xmllint") is None:
        pytest.skip("xmllint not found: apt-get install libxml2-utils")
    bad = tmp_path / "package.xml"
    bad.write_text(MANIFESTS[0].read_text().replace("<license>", "<licence>").replace("</license>", "</licence>"))
    res = subprocess.run(["xmllint", "--noout", "--schema", str(xsd), str(bad)], capture_output=True, text=True)
    assert res.returncode != 0 and "licence" in res.stderr


def _deps(manifest: Path) -> dict[str, set[str]]:
    root = ET.parse(manifest).getroot()
    out: dict[str, set[str]] = {}
    for el in root:
        if el.tag.endswith("depend") and el.text:
            out.setdefault(el.tag, set()).add(el.text.strip())
    depend = out.get("depend", set())
    for tag in ("build_depend", "exec_depend", "build_export_depend"):
        out[tag] = out.get(tag, set()) | depend
    return out


def _imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


ROS_PACKAGES = {"rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "rcl_interfaces", "builtin_interfaces",
                "pebal_msgs", "ament_index_python", "launch", "launch_ros", "launch_testing", "launch_testing_ros"}


def test_every_ros_import_is_declared():
    deps = _deps(REPO / "package.xml")
    run = deps["exec_depend"]
    test = deps.get("test_depend", set()) | run
    used_run = set()
    for f in [*(REPO / "pebal_ros" / "node").glob("*.py"), *(REPO / "pebal_ros" / "pipeline").glob("*.py"),
              REPO / "launch" / "detector.launch.py"]:
        used_run |= _imported_roots(f) & ROS_PACKAGES
    assert used_run <= run, f"imported but not exec_depend: {sorted(used_run - run)}"
    used_test = set()
    for f in (REPO / "test").glob("test_launch*.py"):
        used_test |= _imported_roots(f) & ROS_PACKAGES
    assert used_test <= test, f"imported by launch tests but not declared: {sorted(used_test - test)}"
    assert {"rviz2", "python3-numpy", "python3-opencv"} <= run


def test_manifests_agree():
    main = ET.parse(REPO / "package.xml").getroot()
    msgs = ET.parse(REPO / "msg" / "package.xml").getroot()
    assert main.findtext("name") == "pebal_ros" and msgs.findtext("name") == "pebal_msgs"
    assert main.findtext("version") == msgs.findtext("version")
    assert main.find("export/build_type").text == "ament_python"
    assert msgs.find("export/build_type").text == "ament_cmake"
    assert msgs.findtext("member_of_group") == "rosidl_interface_packages"
    assert {"rosidl_default_generators", "ament_cmake"} <= _deps(REPO / "msg" / "package.xml")["buildtool_depend"]
    from pebal_ros import __version__
    assert main.findtext("version") == __version__


# --- messages ------------------------------------------------------------------------------

def _rosidl_parser():
    try:
        from rosidl_adapter import parser
    except ImportError:
        if not (ROSIDL_DIST / "rosidl_adapter" / "parser.py").is_file():
            pytest.skip("rosidl_adapter not found: apt-get install python3-rosidl (Debian) or source ROS 2")
        sys.path.append(str(ROSIDL_DIST))
        try:
            from rosidl_adapter import parser
        finally:
            sys.path.remove(str(ROSIDL_DIST))
    return parser


MSG_FILES = sorted((REPO / "msg").glob("*.msg"))


def test_msg_files_parse_with_rosidl():
    parser = _rosidl_parser()
    specs = {f.stem: parser.parse_message_file("pebal_msgs", str(f)) for f in MSG_FILES}
    assert set(specs) == {"PebalStatus", "AnomalyRegion"}
    status = specs["PebalStatus"]
    fields = {f.name: str(f.type) for f in status.fields}
    assert fields["header"] == "std_msgs/Header"
    assert fields["regions"] == "pebal_msgs/AnomalyRegion[]"
    assert {"anomaly_fraction", "max_score", "mean_score", "threshold", "inference_latency_ms",
            "end_to_end_latency_ms"} <= set(fields)
    region = {f.name: str(f.type) for f in specs["AnomalyRegion"].fields}
    assert region == {"x_offset": "uint32", "y_offset": "uint32", "width": "uint32", "height": "uint32",
                      "area": "uint32", "centroid_x": "float32", "centroid_y": "float32",
                      "mean_score": "float32", "max_score": "float32"}
    # Comments become the interface documentation in rosidl (IDL @verbatim): they must be kept.
    assert any("camera frame's header" in (c or "") for c in status.fields[0].annotations.get("comment", []))
    known = [parser.BaseType("std_msgs/Header"), parser.BaseType("pebal_msgs/AnomalyRegion")]
    parser.validate_field_types(status, known)


def test_rosidl_parser_rejects_bad_msg(tmp_path):
    parser = _rosidl_parser()
    bad = tmp_path / "Bad.msg"
    bad.write_text("uint32 Width\nfloat32 9score\n")
    with pytest.raises(Exception):
        parser.parse_message_file("pebal_msgs", str(bad))


def test_cmakelists_builds_every_msg():
    cmake = (REPO / "msg" / "CMakeLists.txt").read_text()
    assert "project(pebal_msgs)" in cmake and "rosidl_generate_interfaces(${PROJECT_NAME}" in cmake
    for f in MSG_FILES:
        assert f'"${{PEBAL_REPO_ROOT}}:msg/{f.name}"' in cmake
    assert "DEPENDENCIES std_msgs" in cmake and "ament_package()" in cmake


# --- setup.py: the colcon install layout -------------------------------------------------------

def test_setup_installs_ros_files():
    import setuptools  # noqa: F401  (provides distutils on Python >= 3.12)
    from distutils.core import run_setup

    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        dist = run_setup(str(REPO / "setup.py"), stop_after="config")   # config: pyproject.toml applied
    finally:
        os.chdir(cwd)
    data = {d: set(f) for d, f in dist.data_files}
    assert data["share/ament_index/resource_index/packages"] == {"resource/pebal_ros"}
    assert (REPO / "resource" / "pebal_ros").is_file()
    assert "package.xml" in data["share/pebal_ros"]
    assert "launch/detector.launch.py" in data["share/pebal_ros/launch"]
    assert "config/detector.yaml" in data["share/pebal_ros/config"]
    assert "rviz/pebal.rviz" in data["share/pebal_ros/rviz"]
    scripts = dist.entry_points["console_scripts"]
    assert "detector_node = pebal_ros.node.detector:main" in scripts
    assert "pebal = pebal_ros.cli:main" in scripts
    import configparser
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["install"]["install_scripts"] == "$base/lib/pebal_ros"
    assert cfg["develop"]["script_dir"] == "$base/lib/pebal_ros"


# --- launch file ---------------------------------------------------------------------------

LAUNCH = REPO / "launch" / "detector.launch.py"


def test_launch_file_compiles(tmp_path):
    py_compile.compile(str(LAUNCH), cfile=str(tmp_path / "l.pyc"), doraise=True)


class _Action:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _load_launch_with_stand_ins(share: Path, missing: tuple[str, ...] = ()):
    """Import the launch file with minimal stand-ins for launch / launch_ros / ament_index_python."""
    launch = types.ModuleType("launch")
    launch.LaunchDescription = type("LaunchDescription", (_Action,), {})
    launch.LaunchContext = object
    actions = types.ModuleType("launch.actions")
    for name in ("DeclareLaunchArgument", "LogInfo", "OpaqueFunction"):
        setattr(actions, name, type(name, (_Action,), {}))
    launch_ros = types.ModuleType("launch_ros")
    ros_actions = types.ModuleType("launch_ros.actions")
    ros_actions.Node = type("Node", (_Action,), {})
    aip = types.ModuleType("ament_index_python")
    aip_pk = types.ModuleType("ament_index_python.packages")
    aip_pk.PackageNotFoundError = type("PackageNotFoundError", (KeyError,), {})

    def share_dir(pkg: str) -> str:
        if pkg in missing:
            raise aip_pk.PackageNotFoundError(pkg)
        return str(share)

    aip_pk.get_package_share_directory = share_dir
    saved = {k: sys.modules.get(k) for k in ("launch", "launch.actions", "launch_ros", "launch_ros.actions",
                                               "ament_index_python", "ament_index_python.packages")}
    sys.modules.update({"launch": launch, "launch.actions": actions, "launch_ros": launch_ros,
                        "launch_ros.actions": ros_actions, "ament_index_python": aip,
                        "ament_index_python.packages": aip_pk})
    try:
        spec = importlib.util.spec_from_file_location("detector_launch", LAUNCH)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return mod


@pytest.fixture()
def launch_mod():
    return _load_launch_with_stand_ins(REPO)   # the source tree has the share layout (config/, rviz/)


def _run(mod, **args):
    ld = mod.generate_launch_description()
    entities = ld.args[0]
    declared = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    opaque = [e for e in entities if type(e).__name__ == "OpaqueFunction"][0]
    ctx = types.SimpleNamespace(launch_configurations={**declared, **args})
    return declared, opaque.kwargs["function"](ctx)


def test_launch_arguments(launch_mod):
    declared, _ = _run(launch_mod)
    assert {"model", "runtime", "camera_topic", "namespace", "params_file", "compressed", "rviz",
            "cameras"} <= set(declared)
    for e in launch_mod.generate_launch_description().args[0]:
        if type(e).__name__ == "DeclareLaunchArgument":
            assert e.kwargs["description"]


def _nodes(actions, executable="detector_node"):
    return [a for a in actions if type(a).__name__ == "Node" and a.kwargs["executable"] == executable]


def test_launch_single_camera_defaults(launch_mod):
    _, actions = _run(launch_mod)
    (node,) = _nodes(actions)
    kw = node.kwargs
    assert kw["package"] == "pebal_ros" and kw["namespace"] == "" and kw["name"] == "pebal_detector"
    assert kw["remappings"] == [("image", "/camera/image_raw")]
    params_file, overrides = kw["parameters"]
    assert Path(params_file) == REPO / "config" / "detector.yaml"
    assert overrides == {"input_type": "raw", "use_camera_info": False}   # empty args do not override the file
    assert not _nodes(actions, "rviz2")


def test_launch_compressed_model_threshold_rviz(launch_mod, tmp_path):
    _, actions = _run(launch_mod, compressed="true", model="/m/pebal.onnx", threshold="-4.5", rviz="true",
                      namespace="front", camera_topic="/cam_front/image_raw", use_camera_info="true")
    (node,) = _nodes(actions)
    assert node.kwargs["namespace"] == "front"
    assert node.kwargs["remappings"] == [("image/compressed", "/cam_front/image_raw/compressed"),
                                         ("camera_info", "/cam_front/camera_info")]
    ov = node.kwargs["parameters"][1]
    assert ov["model"] == "/m/pebal.onnx" and ov["threshold"] == -4.5 and ov["input_type"] == "compressed"
    (rviz,) = _nodes(actions, "rviz2")
    cfg = Path(rviz.kwargs["arguments"][1])
    text = cfg.read_text()
    cfg.unlink()
    assert "Value: /front/pebal/overlay" in text and "Value: /cam_front/image_raw\n" in text
    assert "Value: /pebal/overlay" not in text


def test_launch_several_cameras(launch_mod):
    _, actions = _run(launch_mod, cameras="front:/cam_front/image_raw,rear")
    nodes = _nodes(actions)
    assert [(n.kwargs["namespace"], n.kwargs["remappings"][0][1]) for n in nodes] == [
        ("front", "/cam_front/image_raw"), ("rear", "/rear/image_raw")]
    with pytest.raises(ValueError, match="unique"):
        _run(launch_mod, cameras="a:/x,a:/y")


def test_rviz_config_shows_camera_and_outputs():
    import yaml
    cfg = yaml.safe_load((REPO / "rviz" / "pebal.rviz").read_text())
    displays = {d["Name"]: d for d in cfg["Visualization Manager"]["Displays"]}
    topics = {n: d["Topic"]["Value"] for n, d in displays.items()}
    assert topics == {"Camera": "/camera/image_raw", "PEBAL overlay": "/pebal/overlay",
                      "Semantic": "/pebal/semantic_color", "Anomaly mask": "/pebal/anomaly_mask"}
    assert all(d["Class"] == "rviz_default_plugins/Image" for d in displays.values())
    # Best effort on the camera accepts both kinds of drivers.
    assert displays["Camera"]["Topic"]["Reliability Policy"] == "Best Effort"


def test_rviz_config_layout_and_no_tf_needed():
    """The saved window layout (Qt's QMainWindow state, rviz/make_layout.py) places every image
    display's panel and the Displays panel; RViz matches them by name, so a renamed display would
    silently fall back to a thumbnail. The identity transformer keeps the Global Status OK without TF
    (the RViz test, test/ros/ros_rviz.py, checks both on screen)."""
    import yaml
    cfg = yaml.safe_load((REPO / "rviz" / "pebal.rviz").read_text())
    geometry = cfg["Window Geometry"]
    state = bytes.fromhex(geometry["QMainWindow State"])
    names = [d["Name"] for d in cfg["Visualization Manager"]["Displays"]] + [p["Name"] for p in cfg["Panels"]]
    for name in names:   # QDataStream writes a QString as its length and UTF-16BE
        encoded = name.encode("utf-16-be")
        assert len(encoded).to_bytes(4, "big") + encoded in state, f"{name!r} has no place in the saved layout"
    assert geometry["Hide Left Dock"] is False and geometry["Hide Right Dock"] is False
    assert (geometry["Width"], geometry["Height"]) == (1920, 1080)   # the size the layout was made for
    assert cfg["Visualization Manager"]["Transformation"]["Current"]["Class"] == "rviz_common/Identity"


def test_launch_rviz_camera_selects_the_camera_rviz_shows(launch_mod):
    _, actions = _run(launch_mod, rviz="true", cameras="front:/cam_front/image_raw,rear", rviz_camera="rear")
    (rviz,) = _nodes(actions, "rviz2")
    cfg = Path(rviz.kwargs["arguments"][1])
    text = cfg.read_text()
    cfg.unlink()
    assert "Value: /rear/pebal/overlay" in text and "Value: /rear/image_raw\n" in text and "front" not in text
    with pytest.raises(ValueError, match="not one of the cameras"):
        _run(launch_mod, cameras="front,rear", rviz_camera="left")


def test_launch_rviz_without_rviz2_says_so_and_keeps_detectors():
    mod = _load_launch_with_stand_ins(REPO, missing=("rviz2",))
    _, actions = _run(mod, rviz="true", cameras="front,rear")
    assert len(_nodes(actions)) == 2 and not _nodes(actions, "rviz2")
    logs = [a.kwargs["msg"] for a in actions if type(a).__name__ == "LogInfo"]
    assert any("rviz2 is not installed" in m and "without RViz" in m for m in logs), logs
