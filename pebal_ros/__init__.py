"""pebal_ros: PEBAL road-anomaly segmentation for ROS 2 vehicles.

The package is layered (see README "Architecture"); importing it pulls in nothing heavy, so the
ROS-free core, the CLI and the node start fast on machines without a GPU or ROS 2.
"""
__version__ = "0.1.0"
