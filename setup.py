"""pip-installable ROS-free core of pebal_ros (the ROS 2 build uses package.xml, see README)."""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def _share(folder: str, *patterns: str) -> tuple[str, list[str]]:
    """(install dir, files) for colcon's ament_python build: everything ROS finds in share/pebal_ros."""
    files = sorted(str(p.relative_to(here)) for pat in patterns for p in (here / folder).glob(pat) if p.is_file())
    return f"share/pebal_ros/{folder}", files


# ROS 2 (colcon, ament_python): the ament index marker, package.xml, launch/config/rviz/models in
# share/pebal_ros; setup.cfg puts the node executable in lib/pebal_ros for `ros2 run`. Harmless for pip.
ROS_DATA_FILES = [
    ("share/ament_index/resource_index/packages", ["resource/pebal_ros"]),
    ("share/pebal_ros", ["package.xml"]),
    _share("launch", "*.launch.py"),
    _share("config", "*.yaml"),
    _share("rviz", "*.rviz"),
    _share("models", "*.onnx", "*.pt", "*.json", "*.yaml", "*.md"),   # engines are built per GPU
]

setup(
    name="pebal_ros",
    version="0.1.0",
    description="PEBAL road-anomaly segmentation for ROS 2: training, export, node, rosbag replay",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["pebal_ros", "pebal_ros.*"]),
    include_package_data=True,
    package_data={"pebal_ros": ["configs/*.yaml"]},
    install_requires=[
        # torch: install the build for your platform first (README); 2.13.0 is what CI uses.
        "torch>=2.1",
        "numpy>=1.24",
        "opencv-python-headless>=4.8",
        "pyyaml>=6",
        "tqdm>=4.60",
        "scikit-learn>=1.3",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "rosbags>=0.10",
        "mcap>=1.1",
        "pycocotools>=2.0.7",
    ],
    extras_require={
        "test": ["pytest>=7", "mypy>=1.8", "rclpy-intellisense==1.2.0"],
        "gpu": ["cuda-python>=12", "tensorrt>=10"],
    },
    data_files=[(d, f) for d, f in ROS_DATA_FILES if f],
    entry_points={"console_scripts": [
        "pebal = pebal_ros.cli:main",
        "detector_node = pebal_ros.node.detector:main",   # `ros2 run pebal_ros detector_node`
    ]},
)
