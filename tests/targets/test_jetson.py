"""Jetson: TensorRT's QDQ rules, each broken on purpose, and the TensorRT 8 calibration cache."""

from __future__ import annotations

import struct

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from edgeres.errors import ConversionError
from edgeres.targets import jetson
from edgeres.targets.jetson import TENSORRT_RULES, activation_scales, read_calibration_cache
from tests.conftest import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def graph(converted) -> onnx.ModelProto:
    return onnx.load(str(converted("jetson", "int8").path))


def failed(model: onnx.ModelProto) -> list[str]:
    return [check["rule"] for check in (rule(model) for rule in TENSORRT_RULES) if not check["passed"]]


def first(model: onnx.ModelProto, op_type: str, where=lambda node: True) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op_type and where(n))


def initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(i for i in model.graph.initializer if i.name == name)


def replace_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    model.graph.initializer.remove(initializer(model, name))
    model.graph.initializer.append(onnx.numpy_helper.from_array(value, name))


def test_the_converted_graph_follows_every_rule(graph, converted) -> None:
    assert failed(graph) == []
    record = converted("jetson", "int8").record
    assert len([c for c in record.checks if c["passed"]]) == len(TENSORRT_RULES)


def test_asymmetric_zero_point(graph) -> None:
    q = first(graph, "QuantizeLinear")
    replace_initializer(graph, q.input[2], np.array(3, np.int8))
    assert failed(graph) == ["symmetric int8 (zero point 0)"]


def test_per_tensor_weights(graph) -> None:
    conv = first(graph, "Conv")
    dq = first(graph, "DequantizeLinear", lambda n: n.output[0] == conv.input[1])
    scale = onnx.numpy_helper.to_array(initializer(graph, dq.input[1]))
    replace_initializer(graph, dq.input[1], np.array(scale.max(), np.float32))
    replace_initializer(graph, dq.input[2], np.array(0, np.int8))
    assert failed(graph) == ["per-channel weights, per-tensor activations"]


def test_per_channel_activation(graph) -> None:
    q = first(graph, "QuantizeLinear", lambda n: n.input[0] == "input")
    replace_initializer(graph, q.input[1], np.full(3, 0.02, np.float32))
    assert "per-channel weights, per-tensor activations" in failed(graph)


def test_quantized_bias(graph) -> None:
    conv = first(graph, "Conv")
    bias = onnx.numpy_helper.to_array(initializer(graph, conv.input[2]))
    graph.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.round(bias / 1e-4).astype(np.int32), "bias_q"),
        onnx.numpy_helper.from_array(np.array(1e-4, np.float32), "bias_scale"),
    ])
    dq = onnx.helper.make_node("DequantizeLinear", ["bias_q", "bias_scale"], ["bias_dq"], name="bias_DQ")
    graph.graph.node.insert(0, dq)
    conv.input[2] = "bias_dq"
    assert "float biases" in failed(graph)


def test_conv_reading_float(graph) -> None:
    conv = first(graph, "Conv", lambda n: n.name.startswith("layer1.0.conv1"))
    dq = first(graph, "DequantizeLinear", lambda n: n.output[0] == conv.input[0])
    q = first(graph, "QuantizeLinear", lambda n: n.output[0] == dq.input[0])
    conv.input[0] = q.input[0]
    assert failed(graph) == ["every Conv/Gemm input and weight from DequantizeLinear"]


def test_float_residual(graph) -> None:
    add = first(graph, "Add")
    producers = {o: n for n in graph.graph.node for o in n.output}
    residual = next(i for i in add.input if producers[i].op_type == "DequantizeLinear")
    q = producers[producers[residual].input[0]]
    add.input[list(add.input).index(residual)] = q.input[0]
    assert failed(graph) == ["residual Add: a Conv output plus a dequantized residual"]


def test_conv_output_quantized_before_relu(graph) -> None:
    relu = first(graph, "Relu")
    conv_output = relu.input[0]
    scale = onnx.numpy_helper.from_array(np.array(0.05, np.float32), "extra_scale")
    zero = onnx.numpy_helper.from_array(np.array(0, np.int8), "extra_zero")
    graph.graph.initializer.extend([scale, zero])
    position = list(graph.graph.node).index(relu)
    graph.graph.node.insert(position, onnx.helper.make_node("DequantizeLinear", ["extra_q", "extra_scale", "extra_zero"],
                                                            ["extra_dq"], name="extra_DQ"))
    graph.graph.node.insert(position, onnx.helper.make_node("QuantizeLinear", [conv_output, "extra_scale", "extra_zero"],
                                                            ["extra_q"], name="extra_Q"))
    relu.input[0] = "extra_dq"
    assert failed(graph) == ["no QuantizeLinear between a Conv and the ReLU or Add it fuses with"]


def test_a_broken_rule_fails_the_conversion(monkeypatch, model, calib_dir, tmp_path) -> None:
    from edgeres.conversion.pipeline import ConvertOptions, convert

    monkeypatch.setattr(jetson.JetsonTarget, "ort_quantization_options", {})  # ONNX Runtime's defaults
    with pytest.raises(ConversionError, match="breaks TensorRT's QDQ rules.*float biases"):
        convert(model, ConvertOptions(target="jetson", precision="int8", out_dir=tmp_path, calib=calib_dir,
                                      calib_size=50, imgsz=32), log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_calibration_cache_matches_the_qdq_scales(converted, graph) -> None:
    result = converted("jetson", "int8")
    cache = result.path.with_name(result.path.stem + ".calib.cache")
    assert cache in result.files
    text = cache.read_text()
    assert text.splitlines()[0] == "TRT-8201-EntropyCalibration2"
    scales = read_calibration_cache(text)
    expected = activation_scales(graph)
    assert scales.keys() == expected.keys() and len(scales) > 20
    for tensor, scale in expected.items():  # bit for bit: the cache is the QDQ graph's scales
        assert struct.pack(">f", scales[tensor]) == struct.pack(">f", scale)
    fp32 = onnx.load(str(converted("jetson", "fp32").path))
    fp32_tensors = {i.name for i in fp32.graph.input} | {o for n in fp32.graph.node for o in n.output}
    assert set(scales) <= fp32_tensors  # usable with the FP32 ONNX of the same model on TensorRT 8


def test_jetson_refuses_dynamic_batch(monkeypatch, capsys, checkpoint, tmp_path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "jetson", "--fp16",
                           "--dynamic-batch", "--out", tmp_path)
    assert_one_red_line(code, err, "static batch of 1")
