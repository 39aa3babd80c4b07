"""The NPU rules: each passes on our INT8 export, and each catches a graph that breaks it."""

from __future__ import annotations

import types
from pathlib import Path

import onnx
import pytest

from edgeres.conversion.pipeline import ConvertOptions, convert
from edgeres.errors import ConversionError, TargetError
from edgeres.targets.npu import (
    NpuTarget,
    check_no_dynamic_shapes,
    check_qdq_everywhere,
    check_static_batch1,
)

pytestmark = pytest.mark.slow
QUIET_JOB = types.SimpleNamespace(log=lambda message: None)


@pytest.fixture
def npu_model(converted) -> onnx.ModelProto:
    return onnx.load(str(converted("npu", "int8").path))


def test_all_rules_recorded_as_passed(converted) -> None:
    checks = converted("npu", "int8").record.checks
    assert [c["rule"] for c in checks] == [
        "static batch-1 inputs and outputs", "no dynamic shapes", "QDQ around every op"]
    assert all(c["passed"] for c in checks)


def _make_batch_dynamic(model: onnx.ModelProto) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"


def test_dynamic_batch_breaks_static_batch1(npu_model) -> None:
    _make_batch_dynamic(npu_model)
    check = check_static_batch1(npu_model)
    assert not check["passed"] and "input has shape ['N', 3, 32, 32]" in check["detail"]


def test_batch_of_two_breaks_static_batch1(npu_model) -> None:
    npu_model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    assert "input has batch 2" in check_static_batch1(npu_model)["detail"]


def test_dynamic_shapes_rule(converted) -> None:
    model = onnx.load(str(converted("onnx", "fp32", dynamic_batch=True).path))
    check = check_no_dynamic_shapes(model)
    assert not check["passed"] and "has a dynamic axis" in check["detail"]


def test_float_island_breaks_qdq_rule(npu_model) -> None:
    producers = {out: node for node in npu_model.graph.node for out in node.output}
    conv = next(node for node in npu_model.graph.node if node.op_type == "Conv" and node.input[0] in producers
                and producers[node.input[0]].op_type == "DequantizeLinear"
                and producers[node.input[0]].input[0] in producers)
    dequantize = producers[conv.input[0]]
    conv.input[0] = producers[dequantize.input[0]].input[0]  # skip the Q/DQ pair: a float input
    check = check_qdq_everywhere(npu_model)
    assert not check["passed"] and f"Conv '{conv.name}' runs in float" in check["detail"]
    with pytest.raises(ConversionError, match="breaks NPU rules .*QDQ around every op"):
        NpuTarget().check_graph(npu_model, QUIET_JOB, None)


def test_float_model_fails_qdq_rule(converted) -> None:
    model = onnx.load(str(converted("onnx", "fp32").path))
    assert not check_qdq_everywhere(model)["passed"]


def test_npu_needs_int8(model, tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="target npu makes int8, not fp32: add --int8 --calib DIR"):
        convert(model, ConvertOptions(target="npu", out_dir=tmp_path, imgsz=32))


def test_npu_refuses_dynamic_batch(model, calib_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="static batch-1 shape: drop --dynamic-batch"):
        convert(model, ConvertOptions(target="npu", precision="int8", calib=calib_dir,
                                      dynamic_batch=True, out_dir=tmp_path, imgsz=32))


def test_a_kept_layer_exempts_only_itself_and_the_weightless_ops_its_float_output_flows_through() -> None:
    """For compilers that run kept layers in float (rknn): a layer with weights reading that float is still
    an op left out of INT8 that nobody kept."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgeres.targets.npu import check_qdq_everywhere

    def weight(name: str):
        return numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), name)

    scale, zero = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1"], ["c1"], name="layer1.0.conv1/Conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="layer1.0.conv2/Conv"),
             helper.make_node("QuantizeLinear", ["c2", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "kept", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [weight("w1"), weight("w2"), scale, zero])
    model = helper.make_model(graph)
    tail = check_qdq_everywhere(model, frozenset({"layer1.0.conv1"}))
    assert not tail["passed"] and tail["detail"] == "Conv 'layer1.0.conv2/Conv' runs in float"
    both = check_qdq_everywhere(model, frozenset({"layer1.0.conv1", "layer1.0.conv2"}))
    assert both["passed"] and "3 in float with the 2 kept layers" in both["detail"]
    assert not check_qdq_everywhere(model)["passed"]  # and nothing kept: the npu target's own rule
