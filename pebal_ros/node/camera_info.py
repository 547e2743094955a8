"""CameraInfo for the output images: same calibration, scaled when the outputs are at network size.

With ``output_resolution: network`` the output images are smaller than the camera's; tools that
project with the calibration (RViz's Camera display, image_geometry) need intrinsics for that
size. Pixel centres map as x' = (x + 0.5) * s - 0.5, so fx' = s fx and cx' = (cx + 0.5) s - 0.5.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np


class CameraInfoScaleError(ValueError):
    pass


def scaled_intrinsics(k: Any, p: Any, sx: float, sy: float) -> tuple[np.ndarray, np.ndarray]:
    """K (3x3, row-major 9) and P (3x4, row-major 12) for an image scaled by (sx, sy)."""
    K = np.array(k, dtype=np.float64).reshape(3, 3).copy()
    P = np.array(p, dtype=np.float64).reshape(3, 4).copy()
    for M in (K, P):
        M[0, :] *= sx           # fx, skew, cx (and Tx = -fx * baseline for P)
        M[1, :] *= sy
        M[0, 2] += 0.5 * sx - 0.5
        M[1, 2] += 0.5 * sy - 0.5
    return K.reshape(-1), P.reshape(-1)


def camera_info_for_output(info: Any, header: Any, out_w: int, out_h: int, cls: Any, roi_cls: Any,
                           float_seq: Callable[[np.ndarray], Any] = np.asarray) -> Any:
    """A new CameraInfo (of class ``cls``) describing an output image of out_w x out_h pixels.

    ``float_seq`` converts the distortion vector to the library's float64[] type (rosbags: numpy
    array; rclpy: ``array.array('d')``, its setter rejects numpy arrays for unbounded sequences).

    Raises CameraInfoScaleError when the calibration uses binning or a ROI and the size changes
    (the scale would then be ambiguous).
    """
    w, h = int(info.width), int(info.height)
    if w <= 0 or h <= 0:
        raise CameraInfoScaleError(f"camera_info has size {w}x{h}")
    sx, sy = out_w / w, out_h / h
    roi = info.roi
    binned = int(info.binning_x) > 1 or int(info.binning_y) > 1
    has_roi = int(roi.width) > 0 and int(roi.height) > 0 and (int(roi.width), int(roi.height)) != (w, h)
    if (sx, sy) != (1.0, 1.0) and (binned or has_roi):
        raise CameraInfoScaleError("camera_info uses binning or a ROI; cannot rescale it to the network size")
    K, P = scaled_intrinsics(info.k, info.p, sx, sy)
    return cls(
        header=header, height=int(out_h), width=int(out_w), distortion_model=str(info.distortion_model),
        d=float_seq(np.array(info.d, dtype=np.float64)), k=K, r=np.array(info.r, dtype=np.float64), p=P,
        binning_x=int(info.binning_x), binning_y=int(info.binning_y),
        roi=roi_cls(x_offset=int(roi.x_offset), y_offset=int(roi.y_offset), height=int(roi.height),
                    width=int(roi.width), do_rectify=bool(roi.do_rectify)),
    )
