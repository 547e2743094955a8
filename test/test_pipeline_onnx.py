"""The deployment path without ROS: fused ONNX export -> load_runtime -> FramePipeline on real
(rosbags, CDR round-tripped) messages, compared with the step-by-step reference computation."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from pebal_ros.graph.fused import build_fused, reference_outputs
from pebal_ros.export.onnx import export_fused
from pebal_ros.pipeline import FramePipeline, MessageFactory, PipelineConfig
from pebal_ros.pipeline.convert import float_image_from_msg, image_view
from pebal_ros.runtime import load_runtime

from _export_nets import TinySegNet

H, W = 48, 64          # the exported (static) camera size


@pytest.fixture(scope="module")
def net():
    return TinySegNet(seed=5).eval()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, net):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_fused(build_fused(net), path, (H, W))
    return load_runtime(path, device="cpu")


@pytest.fixture(scope="module")
def factory():
    return MessageFactory.for_rosbags(get_typestore(Stores.ROS2_HUMBLE))


def _msg(factory, rgb, encoding):
    arr = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "mono8": rgb[..., 0]}[encoding]
    m = factory.image(factory.header(9, 10, "cam"), np.ascontiguousarray(arr), encoding)
    ts = factory.typestore
    return ts.deserialize_cdr(ts.serialize_cdr(m, "sensor_msgs/msg/Image"), "sensor_msgs/msg/Image")


def test_onnx_runtime_through_pipeline_matches_reference(runtime, net, factory):
    rgb = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    thr = float(np.median(reference_outputs(net, rgb, 0.0)[1]))
    pipe = FramePipeline(runtime, PipelineConfig(threshold=thr, min_region_area=1), factory)
    res = pipe.process(_msg(factory, rgb, "bgr8"))
    sem_ref, score_ref, mask_ref = reference_outputs(net, rgb, thr)
    np.testing.assert_allclose(float_image_from_msg(res.messages["anomaly_score"]), score_ref, atol=1e-3)
    sem, _ = image_view(res.messages["semantic"])
    assert (sem == sem_ref).mean() > 0.999
    mask, _ = image_view(res.messages["anomaly_mask"])
    near = np.abs(score_ref - thr) < 1e-3
    np.testing.assert_array_equal((mask == 255)[~near], mask_ref.astype(bool)[~near])
    assert res.status.regions and 0.3 < res.status.anomaly_fraction < 0.7


def test_camera_size_differs_from_export_size(runtime, net, factory):
    rgb = np.random.default_rng(2).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    pipe = FramePipeline(runtime, PipelineConfig(threshold=0.0), factory)
    res = pipe.process(_msg(factory, rgb, "rgb8"))
    assert res.outputs.score.shape == (96, 128)
    small = cv2.resize(rgb, (W, H), interpolation=cv2.INTER_LINEAR)
    score_small = reference_outputs(net, small, 0.0)[1]
    np.testing.assert_allclose(res.outputs.score, cv2.resize(score_small, (128, 96), interpolation=cv2.INTER_LINEAR),
                               atol=1e-3)
    net_res = FramePipeline(runtime, PipelineConfig(threshold=0.0, output_resolution="network"), factory).process(
        _msg(factory, rgb, "mono8"))
    assert net_res.messages["overlay"].height == H and net_res.status.image_width == 128
