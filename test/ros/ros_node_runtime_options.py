"""The node's runtime parameters (precision, cuda_graph, compile, threads) on real rclpy: a change
reloads the model with the new option (in the background, swapped in on the executor), shown in
/diagnostics' runtime_* values; a combination that cannot work is refused with the settings
resolution's reason, and the running model is kept."""
from __future__ import annotations

import time
from pathlib import Path

from _common import ros, tiny_onnx  # noqa: F401 - ros is a fixture
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter

from pebal_ros.node.detector import PebalDetector
from pebal_ros.node.params import PARAMS

H, W = 48, 80


def _swapped(node: PebalDetector, runtime, timeout: float = 120.0) -> bool:
    """Spin the node until the background load replaced ``runtime`` (the swap runs on its executor)."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    end = time.time() + timeout
    try:
        while time.time() < end and node._pipeline.runtime is runtime:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.remove_node(node)
        executor.shutdown()
    return node._pipeline.runtime is not runtime


def test_runtime_parameters_reload_or_are_refused(ros, tmp_path: Path) -> None:
    node = PebalDetector(parameter_overrides=[Parameter("model", value=tiny_onnx(H, W, folder=str(tmp_path))),
                                              Parameter("device", value="cpu")])
    try:
        runtime = node._pipeline.runtime
        assert node._runtime_info["threads"] == "default" and node._runtime_info["cuda_graph"] is False
        assert node.set_parameters([Parameter("threads", value=1)])[0].successful
        assert _swapped(node, runtime), "a runtime option must reload the model"
        assert node._runtime_info["threads"] == 1 and node._pipeline.runtime.session.get_session_options(
        ).intra_op_num_threads == 1
        assert node._settings.source("runtime.threads") == "node parameter"
        runtime = node._pipeline.runtime
        for name, value, reason in (("cuda_graph", "on", "needs a CUDA device, but the device is cpu"),
                                    ("compile", True, "torch.compile"),
                                    ("precision", "fp16", "baked in"),
                                    ("cuda_graph", "maybe", "must be one of")):
            res = node.set_parameters([Parameter(name, value=value)])[0]
            assert not res.successful and reason in res.reason, (name, res.reason)
            assert node._pipeline.runtime is runtime and node.get_parameter(name).value == PARAMS[name].default
        # asking for what the graph is anyway is fine (and reloads)
        assert node.set_parameters([Parameter("precision", value="fp32")])[0].successful
        assert _swapped(node, runtime)
        assert node._runtime_info["precision"] == "fp32" and node._runtime_info["threads"] == 1
    finally:
        node.destroy_node()
