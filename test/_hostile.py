"""Hostile files for the security tests (helper module, not a test file).

Everything here is what an attacker with write access to a shared folder can produce with the
ordinary libraries: a valid fused-contract ONNX graph that reports nothing anomalous, YAML alias
bombs, calibration records with out-of-range or mistyped values.
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

from pebal_ros.graph.contract import ExportSpec

def alias_bomb(levels: int = 9) -> str:
    """One YAML value of nested aliases ("billion laughs"): 9 levels are about 600 bytes and
    9**9 (387 M) leaves once expanded; 7 levels (4.8 M) keep the old code's cost bounded in a test."""
    value = "&a0 [x, x, x, x, x, x, x, x, x]"
    for i in range(1, levels):
        value = f"&a{i} [{value}, " + ", ".join([f"*a{i - 1}"] * 8) + "]"
    return value


ALIAS_BOMB = f"bomb: {alias_bomb(9)}\n"


def blind_onnx(path: Path, image_size: tuple[int, int] = (128, 256), score: float = -100.0,
               threshold: float = -3.7) -> Path:
    """A graph that honours the fused contract (inputs image/threshold, outputs semantic/score/mask,
    pebal metadata) but scores every pixel ``score`` and flags nothing: planted in a cache, it
    silences the detector while everything looks healthy."""
    h, w = image_size
    hw = helper.make_tensor("hw_shape", TensorProto.INT64, [2], [h, w])
    nodes = [
        helper.make_node("Constant", [], ["hw"], value=hw),
        helper.make_node("ConstantOfShape", ["hw"], ["semantic"],
                         value=helper.make_tensor("z8", TensorProto.UINT8, [1], [0])),
        helper.make_node("ConstantOfShape", ["hw"], ["score"],
                         value=helper.make_tensor("s", TensorProto.FLOAT, [1], [score])),
        helper.make_node("ConstantOfShape", ["hw"], ["mask"],
                         value=helper.make_tensor("m8", TensorProto.UINT8, [1], [0])),
    ]
    graph = helper.make_graph(
        nodes, "blind",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, [h, w, 3]),
         helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("semantic", TensorProto.UINT8, [h, w]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, [h, w]),
         helper.make_tensor_value_info("mask", TensorProto.UINT8, [h, w])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    spec = ExportSpec(image_size=(h, w), threshold=threshold, arch="espnetv2", model_kind="pebal",
                      threshold_calibrated=True, threshold_source="preset synthetic")
    for k, v in spec.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def unknown_op_onnx(path: Path) -> Path:
    """A fused-contract graph with an operator no runtime knows."""
    blind_onnx(path)
    model = onnx.load(str(path))
    model.graph.node[1].op_type = "NoSuchOp"
    onnx.save(model, str(path))
    return path


def external_data_onnx(path: Path, location: str = "../../../../etc/hostname") -> Path:
    """A fused-contract graph whose score reads a weight from ``location``, outside the model's folder."""
    blind_onnx(path)
    model = onnx.load(str(path))
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    model.graph.initializer.append(weight)
    model.graph.node[2].output[0] = "score0"
    model.graph.node.append(helper.make_node("Add", ["score0", "w"], ["score"]))
    onnx.save(model, str(path))
    return path


def set_onnx_metadata(path: Path, **values: str) -> Path:
    """Overwrite ``pebal.<key>`` metadata entries of an ONNX file (what a hostile exporter writes)."""
    model = onnx.load(str(path))
    for key, value in values.items():
        for p in model.metadata_props:
            if p.key == f"pebal.{key}":
                p.value = value
    onnx.save(model, str(path))
    return path
