"""setup.py for what pyproject.toml cannot declare: the files ROS finds in share/pebal_ros.

Everything else (name, dependencies, entry points) is in pyproject.toml. colcon's ament_python
build runs this file; setup.cfg puts the node executable in lib/pebal_ros for ``ros2 run``.
"""
from pathlib import Path

from setuptools import setup

here = Path(__file__).parent


def _share(folder: str, *patterns: str) -> tuple[str, list[str]]:
    """(install dir, files): everything ROS (and pebal_ros.paths) finds in share/pebal_ros."""
    files = sorted(str(p.relative_to(here)) for pat in patterns for p in (here / folder).glob(pat) if p.is_file())
    return f"share/pebal_ros/{folder}", files


# The ament index marker and package.xml for ROS 2; launch/config/rviz/models in share/pebal_ros.
# pip installs these under <prefix>/share/pebal_ros too, where pebal_ros.paths finds the models.
SHARE_FILES = [
    ("share/ament_index/resource_index/packages", ["resource/pebal_ros"]),
    ("share/pebal_ros", ["package.xml"]),
    _share("launch", "*.launch.py"),
    _share("config", "*.yaml"),
    _share("rviz", "*.rviz"),
    _share("models", "*.pt", "*.json", "*.yaml", "*.md"),   # bundled models; engines are built per GPU
]

setup(
    # colcon reads name/version from setup.py's arguments without building: keep them here too.
    name="pebal_ros",
    version="0.1.0",
    python_requires=">=3.10",
    license="Apache-2.0",
    data_files=[(d, f) for d, f in SHARE_FILES if f],
)
