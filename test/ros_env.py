"""A ROS 2 environment for the real ROS tests (test/ros/), found or built from this checkout.

The plain test command (``python3 -m pytest -q test``, ROS *not* sourced) must still run the ROS
tests for real wherever ROS 2 is installed, so this module:

1. uses the current environment when rclpy, launch_testing and pebal_msgs import and pebal_ros is
   in the ament index (a user who sourced their workspace);
2. else, with ``/opt/ros/<distro>/setup.bash`` present, builds this checkout with colcon
   (``pebal_ros`` = repository root, ``pebal_msgs`` = msg/) into the user cache folder, outside the
   source tree, and returns the environment of ``source <distro> && source <ws>/install`` -- the
   build reruns only when a source file changed (a content hash), and colcon itself is incremental;
3. else, with ``../shared/ros2`` present (ROS available to this project but not installed), reports
   the install commands as a failure: CI must install it, never silently skip;
4. else the tests skip with that reason.

The ROS tests then run in subprocesses under that environment, with DDS kept on loopback and a
ROS_DOMAIN_ID per test. The interpreter running pytest is the one colcon, the node's entry script
and ``ros2`` use: ROS's compiled modules are built for exactly this Python, so mixing interpreters
fails in ways that look like ROS bugs.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_ROS = Path(os.environ.get("PEBAL_SHARED_ROS", REPO.parent / "shared" / "ros2"))
DISTROS = ("jazzy", "humble", "rolling", "kilted")
LOOPBACK_CYCLONE = ("<CycloneDDS><Domain><General><Interfaces><NetworkInterface name=\"lo\"/>"
                    "</Interfaces></General></Domain></CycloneDDS>")

# What the colcon build reads: a change to any of these rebuilds the workspace.
_BUILD_INPUTS = ("setup.py", "setup.cfg", "pyproject.toml", "package.xml", "resource", "launch", "config", "rviz", "models",
                 "msg", "pebal_ros")
_BUILD_SUFFIXES = {".py", ".cfg", ".xml", ".yaml", ".rviz", ".msg", ".txt", ".onnx", ".pt", ".json", ".md", ""}

INSTALL_HELP = """ROS 2 is available to this project in {shared} but not installed. Install it (as root), then rerun:
  apt-get update && apt-get install -y --no-install-recommends zstd libyaml-0-2 libtinyxml2-9 libspdlog1.10 \\
      libconsole-bridge1.0 libddsc0debian libsqlite3-0 libzstd1 liblz4-1 libopencv-core406 \\
      libopencv-imgproc406 libopencv-imgcodecs406 libboost-python1.74.0 build-essential cmake
  {py} -m pip install colcon-common-extensions 'empy<4' lark catkin_pkg psutil argcomplete packaging pyyaml \\
      'numpy>=2' 'opencv-python-headless>=4.10,<5' pytest
  tar -C / --zstd -xf {shared}/ros2-jazzy-debian12-amd64.tar.zst"""


# The RViz test (test/ros/ros_rviz.py): rviz2 from the overlay beside the Jazzy build, a virtual X
# display and the tools that take and read screenshots (../shared/ros2/README.md, "RViz 2").
RVIZ_TARBALL = "rviz2-jazzy-overlay-debian12-amd64.tar.zst"
RVIZ_TOOLS = ("Xvfb", "xwininfo", "import")
RVIZ_HELP = """RViz 2 is available to this project in {tarball} but not installed. Install it (as root), then rerun:
  apt-get update && apt-get install -y --no-install-recommends libogre1.12.10 libassimp5 liborocos-kdl1.5 \\
      libcurl4 libfreetype6 libqt5core5a libqt5gui5 libqt5widgets5 libqt5svg5 libgl1 libglx-mesa0 \\
      libgl1-mesa-dri libxrandr2 fonts-dejavu-core xvfb xauth x11-utils imagemagick
  tar -C / --zstd -xf {tarball}"""


class RosUnavailable(Exception):
    """No ROS 2 here: skip (``must_fail`` False) or fail with install instructions (True)."""

    def __init__(self, reason: str, must_fail: bool = False):
        super().__init__(reason)
        self.must_fail = must_fail


@dataclass
class RosEnv:
    env: dict[str, str]
    how: str            # "sourced" or "built <ws>"
    distro: str

    def for_test(self, domain_id: int) -> dict[str, str]:
        env = dict(self.env)
        env.update(ROS_DOMAIN_ID=str(domain_id), CYCLONEDDS_URI=LOOPBACK_CYCLONE, RMW_IMPLEMENTATION="rmw_cyclonedds_cpp",
                   PYTHONUNBUFFERED="1", RCUTILS_COLORIZED_OUTPUT="0")
        if self.distro == "humble":   # Humble predates ROS_AUTOMATIC_DISCOVERY_RANGE
            env["ROS_LOCALHOST_ONLY"] = "1"
        else:                         # and Jazzy warns about the deprecated variable
            env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
            env.pop("ROS_LOCALHOST_ONLY", None)
        return env

def _sourced_ok() -> bool:
    code = ("import rclpy, launch_testing, launch_ros, pebal_msgs\n"
            "from ament_index_python.packages import get_package_share_directory as g\n"
            "g('pebal_ros')")
    if not os.environ.get("AMENT_PREFIX_PATH"):
        return False
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0


def _find_distro() -> Path | None:
    root = Path(os.environ.get("PEBAL_ROS_ROOT", "/opt/ros"))
    if (root / "setup.bash").is_file():
        return root
    for name in DISTROS:
        if (root / name / "setup.bash").is_file():
            return root / name
    return None


def _source(scripts: list[Path], base: dict[str, str]) -> dict[str, str]:
    """The environment after sourcing ``scripts`` in bash, starting from ``base``."""
    cmd = " && ".join(f"source {shlex.quote(str(s))}" for s in scripts) + " && env -0"
    out = subprocess.run(["bash", "-c", cmd], env=base, capture_output=True, check=True, timeout=120).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def _base_env() -> dict[str, str]:
    """This process's environment with our interpreter first on PATH (for ``python3`` / ``ros2``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_", "ROS_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _source_hash() -> str:
    h = hashlib.sha256(sys.executable.encode())
    for name in _BUILD_INPUTS:
        p = REPO / name
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else []
        for f in files:
            if "__pycache__" in f.parts or f.suffix not in _BUILD_SUFFIXES or f.name.startswith("."):
                continue
            h.update(str(f.relative_to(REPO)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def workspace_dir() -> Path:
    sys.path.insert(0, str(REPO))
    try:
        from pebal_ros.paths import cache_dir
    finally:
        sys.path.pop(0)
    key = hashlib.sha256(f"{REPO}|{sys.executable}".encode()).hexdigest()[:10]
    return cache_dir() / "ros_ws" / key


def build_workspace(distro: Path, ws: Path) -> Path:
    """colcon-build this checkout into ``ws`` unless the sources are unchanged; the install folder."""
    stamp = ws / "source_hash"
    digest = _source_hash()
    install = ws / "install"
    if stamp.is_file() and stamp.read_text() == digest and (install / "setup.bash").is_file():
        return install
    if subprocess.run([sys.executable, "-c", "import colcon_core, colcon_ros"], capture_output=True).returncode:
        raise RosUnavailable(f"colcon is not installed for {sys.executable}: {sys.executable} -m pip install -e "
                             f"'{REPO}[test]' (the test extra brings colcon and what the ROS 2 build needs)",
                             must_fail=True)
    ws.mkdir(parents=True, exist_ok=True)
    env = _source([distro / "setup.bash"], _base_env())
    cmd = [sys.executable, "-m", "colcon", "--log-base", str(ws / "log"), "build",
           "--base-paths", str(REPO), str(REPO / "msg"), "--packages-select", "pebal_ros", "pebal_msgs",
           "--build-base", str(ws / "build"), "--install-base", str(install),
           "--event-handlers", "console_cohesion+", "summary+",
           "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    proc = subprocess.run(cmd, cwd=ws, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"colcon build of this checkout failed ({' '.join(cmd)}):\n"
                           f"{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
    stamp.write_text(digest)
    return install


def find_ros_env() -> RosEnv:
    """The environment the ROS tests run in; raises RosUnavailable (skip or fail) when there is none."""
    if _sourced_ok():
        return RosEnv(_base_env() | {k: v for k, v in os.environ.items() if k.startswith(("AMENT_", "COLCON_",
                                                                                          "ROS_"))},
                      "sourced", os.environ.get("ROS_DISTRO", ""))
    distro = _find_distro()
    if distro is None:
        if SHARED_ROS.is_dir():
            raise RosUnavailable(INSTALL_HELP.format(shared=SHARED_ROS, py=sys.executable), must_fail=True)
        raise RosUnavailable("no ROS 2 install (/opt/ros/<distro>/setup.bash) and no ../shared/ros2 to install "
                             "from: the real ROS tests need ROS 2 Humble or Jazzy")
    ws = workspace_dir()
    install = build_workspace(distro, ws)
    env = _source([distro / "setup.bash", install / "setup.bash"], _base_env())
    return RosEnv(env, f"built {ws}", env.get("ROS_DISTRO", distro.name))


def rviz_unavailable(ros: RosEnv) -> RosUnavailable | None:
    """Why the RViz test cannot run here (a failure where the overlay could be installed), or None."""
    prefixes = [p for p in ros.env.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    have_rviz = any((Path(p) / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").is_file()
                    for p in prefixes)
    tools = [t for t in RVIZ_TOOLS if shutil.which(t, path=ros.env.get("PATH")) is None]
    if have_rviz and not tools:
        return None
    missing = ", ".join((["rviz2"] if not have_rviz else []) + tools)
    tarball = SHARED_ROS / RVIZ_TARBALL
    if tarball.is_file():
        return RosUnavailable(f"missing {missing}. " + RVIZ_HELP.format(tarball=tarball), must_fail=True)
    return RosUnavailable(f"missing {missing}: the RViz test needs rviz2 (ros-$ROS_DISTRO-rviz2), Xvfb, "
                          "xwininfo (x11-utils) and ImageMagick's import")
