"""The node's model settings (ROS-free, with the stand-in rclpy of test_node_shell): what it resolved
and from where is logged once and published in /diagnostics; pickled code is never run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from test_node_shell import _image, _node, _Param, _wait, detector_mod, onnx_model  # noqa: F401 - fixtures

from pebal_ros.models import build_model, save_checkpoint


def _diag(node) -> tuple[int, str, dict[str, str]]:
    node.timers[0][1]()
    st = node.pubs["/diagnostics"].sent[-1].status[0]
    return st.level, st.message, {kv.key: kv.value for kv in st.values}


def test_node_reports_settings_and_sources(detector_mod, onnx_model):  # noqa: F811
    node = _node(detector_mod, model=onnx_model)
    try:
        _, _, values = _diag(node)
        assert values["setting_threshold"].endswith("(ONNX metadata)")
        assert values["threshold_calibrated"] == "no" and "model_summary" in values
        assert values["setting_input_size"].endswith("(ONNX metadata)")
        logs = node.logger.records
        assert any(lvl == "info" and "loaded model" in m and "runtime onnxruntime" in m for lvl, m in logs)
        warned = [m for lvl, m in logs if lvl == "warning" and "pebal calibrate" in m]
        assert len(warned) == 1
        # an explicit threshold: the user's choice, no longer "uncalibrated"; no repeated warning
        assert node.set_parameters([_Param("threshold", -2.0)])[0].successful
        _, _, values = _diag(node)
        assert values["setting_threshold"] == "-2.0 (node parameter)" and values["threshold_calibrated"] == "yes"
        assert node._pipeline.cfg.threshold == -2.0
        assert node.set_parameters([_Param("threshold", float("nan"))])[0].successful
        assert [m for lvl, m in node.logger.records if lvl == "warning" and "pebal calibrate" in m] == warned
        # the graph's input size is baked in: another one is refused, the model kept
        rt = node._pipeline.runtime
        res = node.set_parameters([_Param("input_size", "512x1024")])[0]
        assert not res.successful and "baked in" in res.reason and node._pipeline.runtime is rt
        res = node.set_parameters([_Param("input_size", "big")])[0]
        assert not res.successful and "HEIGHTxWIDTH" in res.reason
    finally:
        node.destroy_node()


def test_uncalibrated_threshold_is_a_diagnostics_warning(detector_mod, onnx_model):  # noqa: F811
    DiagnosticStatus = sys.modules["diagnostic_msgs.msg"].DiagnosticStatus
    node = _node(detector_mod, model=onnx_model)
    try:
        node.pubs["pebal/status"].subscribers = 1
        node.subs["image"][1](_image(detector_mod))
        assert _wait(lambda: node.stats.processed == 1)
        level, message, _ = _diag(node)       # frames flow fine, but the threshold means nothing yet
        assert level == DiagnosticStatus.WARN and "not calibrated" in message and "pebal calibrate" in message
        assert node.set_parameters([_Param("threshold", -2.0)])[0].successful
        node.subs["image"][1](_image(detector_mod, seq=2))
        assert _wait(lambda: node.stats.processed == 2)
        level, message, _ = _diag(node)
        assert level == DiagnosticStatus.OK, message
    finally:
        node.destroy_node()


def test_node_refuses_pickled_code(detector_mod, tmp_path: Path):  # noqa: F811
    marker = tmp_path / "pwned.txt"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    net = build_model("espnetv2", s=0.5, abstention=True)
    save_checkpoint(net, tmp_path / "ok.pt")
    state = torch.load(tmp_path / "ok.pt", weights_only=True)
    state["meta"]["evil"] = Payload()
    torch.save(state, tmp_path / "evil.pt")
    for runtime in ("auto", "torch"):
        node = _node(detector_mod, model=str(tmp_path / "evil.pt"), runtime=runtime)
        try:
            assert node._pipeline is None and "refusing to unpickle" in node._model_error
            level, message, _ = _diag(node)
            assert level == sys.modules["diagnostic_msgs.msg"].DiagnosticStatus.ERROR and "unpickle" in message
        finally:
            node.destroy_node()
    assert not marker.exists()
