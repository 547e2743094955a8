"""Installs that work anywhere: declared dependencies, and a built wheel that finds its bundled model.

`.ci/run` is the real check (a fresh venv that sees only what the project declares); these tests say
*which* declaration is missing when something breaks, and cover the non-editable install, which CI's
editable install does not exercise.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))

# import name -> distribution name, where they differ
DIST_OF = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow",
           "backports": "backports.zstd"}
STDLIB_LATER = {"compression"}     # Python 3.14's compression.zstd; backports.zstd before
# Imported only where that stack exists: ROS 2 (the node, launch), TensorRT / CUDA (the GPU extra).
PROVIDED_ELSEWHERE = {"rclpy", "launch", "launch_ros", "launch_testing", "launch_testing_ros", "ament_index_python",
                      "sensor_msgs", "std_msgs", "diagnostic_msgs", "rcl_interfaces", "builtin_interfaces",
                      "pebal_msgs", "cv_bridge", "rosbag2_py", "message_filters", "diagnostic_updater",
                      "tensorrt", "cuda", "pycuda"}


def _dist(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def _third_party_imports() -> dict[str, str]:
    """Top-level module name -> first file importing it, for every import in pebal_ros/."""
    found: dict[str, str] = {}
    for path in sorted((REPO / "pebal_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names | STDLIB_LATER and top != "pebal_ros":
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_import_is_declared() -> None:
    declared = {_dist(r) for r in PYPROJECT["project"]["dependencies"]}
    # Optional stacks, imported only where used: TensorRT / CUDA (gpu), Ray (ray: pebal_ros/fleet).
    for extra in ("gpu", "ray"):
        declared |= {_dist(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]}
    missing = {mod: where for mod, where in _third_party_imports().items()
               if mod not in PROVIDED_ELSEWHERE and DIST_OF.get(mod, mod).lower() not in declared}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_ray_is_imported_only_by_the_fleet_and_only_when_used() -> None:
    """Ray is an extra: no module outside pebal_ros/fleet imports it, and the fleet's modules import
    it inside functions only (`pebal replay` without --ray must work where Ray is not installed)."""
    for path in sorted((REPO / "pebal_ros").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if any(n.split(".")[0] == "ray" for n in names):
                rel = path.relative_to(REPO).as_posix()
                assert rel.startswith("pebal_ros/fleet/"), f"{rel} imports ray"
                assert id(node) not in top_level, f"{rel} imports ray at module level"


def test_onnx_exporter_needs_are_declared() -> None:
    """torch.onnx.export's default (dynamo) exporter imports onnxscript: not imported by us, so the
    scan above cannot see it; a fresh venv without it failed `pebal demo`."""
    deps = {_dist(r) for r in PYPROJECT["project"]["dependencies"]}
    uses_exporter = any("torch.onnx.export" in p.read_text(encoding="utf-8")
                        for p in (REPO / "pebal_ros").rglob("*.py"))
    assert uses_exporter and {"onnx", "onnxscript", "onnxruntime"} <= deps


def test_console_scripts_and_python_floor() -> None:
    assert PYPROJECT["project"]["scripts"]["pebal"] == "pebal_ros.cli:main"
    assert "setuptools.build_meta" == PYPROJECT["build-system"]["build-backend"]
    # colcon evaluates setup.py's arguments with ast.literal_eval: requires-python must come from there
    assert "requires-python" in PYPROJECT["project"]["dynamic"]
    assert 'python_requires=">=3.10"' in (REPO / "setup.py").read_text(encoding="utf-8")


def test_package_data_covers_the_demo_road_clip() -> None:
    """Every file of the bundled road clip matches a package-data pattern: `pip install .` users
    get the whole asset (a file type the patterns miss would be left out silently)."""
    from fnmatch import fnmatch

    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["pebal_ros"]
    clip = REPO / "pebal_ros" / "demo_data" / "road_clip"
    files = [p.relative_to(REPO / "pebal_ros").as_posix() for p in clip.rglob("*") if p.is_file()]
    assert len(files) > 60          # manifest, SOURCES.md, frames and labels
    missed = [f for f in files if not any(fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns)]
    assert not missed, f"not installed by pyproject's package-data: {missed}"


@pytest.mark.slow
def test_wheel_installs_and_finds_bundled_model(tmp_path: Path) -> None:
    """`pip install .` / a wheel: the models land in <prefix>/share/pebal_ros/models and the package
    finds them there (it used to look in site-packages/models/), and `pebal` lands in bin/."""
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(REPO)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("pebal_ros-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    share = "pebal_ros-0.1.0.data/data/share/pebal_ros/models/"
    for model in ("pebal_synthetic_espnetv2.pt", "pebal_espnetv2_road.pt", "pebal_espnetv2_road.pt.calibration.yaml"):
        assert share + model in names
    assert not any(n.endswith(".onnx") for n in names), "a cached export was packaged"
    clip = REPO / "pebal_ros" / "demo_data" / "road_clip"
    assert {f"pebal_ros/{p.relative_to(REPO / 'pebal_ros').as_posix()}" for p in clip.rglob("*") if p.is_file()} \
        <= set(names), "the demo's road clip is not (completely) in the wheel"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                        "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "no such option: --python" in r.stderr:
        pytest.skip("pip < 22.3 cannot install into another interpreter")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (venv / "bin" / "pebal").is_file() and not (venv / "lib" / "pebal_ros").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH")}
    r = subprocess.run([str(py), "-c", "from pebal_ros.paths import bundled_model; print(bundled_model())"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()) == venv / "share" / "pebal_ros" / "models" / "pebal_espnetv2_road.pt"


def _extra(name: str) -> set[str]:
    """The distributions an extra installs, following the project's own extras (``pebal_ros[ros]``)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    out: set[str] = set()
    todo, seen = [name], set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for req in extras[extra]:
            dist = _dist(req).replace("_", "-")
            if dist == "pebal-ros":
                todo += [e.strip() for e in req.split("[", 1)[1].split("]")[0].split(",") if e.strip() not in seen]
            else:
                out.add(dist)
    return out


def test_test_extra_is_enough_for_the_ros_tests() -> None:
    """The README's test command (`pip install -e '.[test]'`, then pytest) runs the real ROS tests wherever
    ROS 2 is installed: test/ros_env.py builds this checkout with colcon, in the Python that runs the
    tests. So the test extra brings colcon and what the ROS 2 build needs in that Python (the packages
    ros_env's install instructions name), and nothing that owns the top-level ``rclpy`` name and would
    shadow the install's real one (rclpy-intellisense did)."""
    import shlex

    from ros_env import INSTALL_HELP

    pip_line = INSTALL_HELP.split("-m pip install", 1)[1].split("\n  tar ")[0].replace("\\\n", " ")
    needed = {_dist(r).replace("_", "-") for r in shlex.split(pip_line)}
    assert {"colcon-common-extensions", "empy", "lark", "catkin-pkg", "pytest"} <= needed   # the line was parsed
    test_extra = _extra("test")
    assert needed <= test_extra, f"the test extra lacks {sorted(needed - test_extra)}"
    assert not {d for d in test_extra if d.startswith("rclpy")}, test_extra
    # CI runs the README's test command as written, with no ROS install step of its own in between
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert not re.search(r"pip install[^\n]*\.\[", ci), "CI installs an extra the README's test command does not"
