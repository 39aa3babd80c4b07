"""Jetson: an ONNX made for TensorRT, FP16 or INT8 with explicit quantization (QDQ).

TensorRT 10.1 deprecated its INT8 calibrators: the QDQ graph carries the scales and
TensorRT honours them. The graph follows TensorRT's placement rules, so it can fuse
conv+bn+relu and the residual add into one int8 kernel: symmetric int8 (zero point 0),
per-channel weights, per-tensor activations, float biases, every Conv/Gemm fed by
DequantizeLinear, both inputs of each residual Add dequantized, and no QuantizeLinear
between a Conv and the ReLU or Add after it. Each rule is checked on the final graph.

For devices stuck on TensorRT 8.x (the Jetson Nano's JetPack 4.6), the same calibration
run is also written as a TensorRT calibration cache, for the FP32 ONNX of the same model.
The engine is built on the device (`edgeres build-engine`), since TensorRT engines are
specific to the GPU and TensorRT version that built them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import onnx
import onnx.numpy_helper

from ..exporters.onnx_tools import module_of
from ..errors import ConversionError
from .base import ConvertJob
from .npu import QDQ_OPS, _check, _consumers, _producers, apply_rules
from .onnx import OnnxTarget

# TensorRT 8.2.1, JetPack 4.6: the last TensorRT for the Jetson Nano (and TX1/TX2).
CACHE_TRT_VERSION = 8201
CACHE_HEADER = f"TRT-{CACHE_TRT_VERSION}-EntropyCalibration2"
WEIGHTED_OPS = ("Conv", "Gemm")


class JetsonTarget(OnnxTarget):
    name: ClassVar[str] = "jetson"
    summary: ClassVar[str] = "ONNX for TensorRT on a Jetson: FP16, or INT8 with TensorRT's QDQ rules (+ TRT 8 cache)"
    # Only each layer's input is quantized here (TensorRT fuses the rest into the int8 kernels);
    # a layer without Q/DQ runs in FP16 (or FP32) in TensorRT.
    placement: ClassVar[frozenset[str]] = frozenset()
    higher_precision: ClassVar[str] = "float (FP16 in TensorRT)"
    symmetric_activations: ClassVar[bool] = True
    ort_quantization_options: ClassVar[dict] = {
        "QuantizeBias": False,  # TensorRT quantizes biases itself; an int32 DequantizeLinear is refused
        "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm"],  # so the ReLU or the add fuses into the conv
    }
    # Inputs of weighted ops and pools; the residual Add is left to TensorRT, which fuses it into
    # the conv before it when that conv's output is not quantized and the other input is.
    ort_op_types: ClassVar[list[str] | None] = ["Conv", "Gemm", "MaxPool", "GlobalAveragePool"]

    def check_graph(self, model: onnx.ModelProto, job: ConvertJob, plan) -> list[dict]:
        if job.precision != "int8":
            return []
        return apply_rules(TENSORRT_RULES, model, job, "TensorRT's QDQ rules", "TensorRT rule", frozenset(plan.higher))

    def after_quantization(self, path: Path, plan) -> None:
        quantize_residuals(path, plan.ranges)

    def companion_files(self, model: onnx.ModelProto, job: ConvertJob) -> dict[str, bytes]:
        if job.precision != "int8":
            return {}
        return {f"{job.stem}.calib.cache": calibration_cache(model).encode()}


def quantize_residuals(path: Path, ranges: dict) -> int:
    """Q/DQ on the residual input of each Add whose inputs both come from a Conv (a downsampling block).

    TensorRT fuses a residual Add into the Conv before it when the other input is
    quantized; ONNX Runtime leaves a Conv's output (the downsample branch) in float. Its
    symmetric scale comes from the plan's range for that downsample: max |x| / 127.
    Returns the number of residuals quantized.
    """
    model = onnx.load(str(path))
    producers = _producers(model)
    residuals = []
    for node in model.graph.node:
        if node.op_type == "Add" and all(getattr(producers.get(i), "op_type", None) == "Conv" for i in node.input):
            branch = [i for i in node.input if "downsample" in producers[i].name] or [node.input[1]]
            residuals.append((node, branch[0]))
    for add, tensor in residuals:
        amax = max(abs(v) for v in ranges[module_of(producers[tensor].name)])
        scale = onnx.numpy_helper.from_array(np.array(amax / 127, np.float32), f"{tensor}_residual_scale")
        zero = onnx.numpy_helper.from_array(np.array(0, np.int8), f"{tensor}_residual_zero_point")
        model.graph.initializer.extend([scale, zero])
        quantized, restored = f"{tensor}_residual_quantized", f"{tensor}_residual_dequantized"
        q = onnx.helper.make_node("QuantizeLinear", [tensor, scale.name, zero.name], [quantized], name=f"{tensor}_residual_Q")
        dq = onnx.helper.make_node("DequantizeLinear", [quantized, scale.name, zero.name], [restored],
                                   name=f"{tensor}_residual_DQ")
        position = list(model.graph.node).index(add)
        model.graph.node.insert(position, dq)
        model.graph.node.insert(position, q)
        add.input[list(add.input).index(tensor)] = restored
    onnx.save(model, str(path))
    return len(residuals)


def calibration_cache(model: onnx.ModelProto) -> str:
    """TensorRT 8's calibration cache from the QDQ graph's activation scales: `tensor: big-endian float hex`.

    The tensor names are the FP32 graph's (each QuantizeLinear reads one), so the cache
    goes with the FP32 ONNX of the same model, converted with --target jetson.
    """
    lines = [CACHE_HEADER]
    for tensor, scale in activation_scales(model).items():
        lines.append(f"{tensor}: {struct.pack('>f', scale).hex()}")
    return "\n".join(lines) + "\n"


def read_calibration_cache(text: str) -> dict[str, float]:
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("TRT-") or not lines[0].endswith("Calibration2"):
        raise ConversionError("not a TensorRT calibration cache: the first line should be TRT-<version>-...")
    scales = {}
    for line in lines[1:]:
        tensor, _, value = line.rpartition(": ")
        scales[tensor] = struct.unpack(">f", bytes.fromhex(value))[0]
    return scales


def activation_scales(model: onnx.ModelProto) -> dict[str, float]:
    """{tensor: scale} for every QuantizeLinear on an activation (not on a weight)."""
    constants = _constants(model)
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants:
            scales[node.input[0]] = float(np.asarray(constants[node.input[1]]).reshape(-1)[0])
    return scales


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}


def check_symmetric_int8(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    constants, problems, count = _constants(model), [], 0
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        count += 1
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None:
            problems.append(f"{node.name} has no int8 zero point")
        elif zero.dtype != np.int8 or np.any(zero != 0):
            problems.append(f"{node.name} has zero point {zero.reshape(-1)[:3].tolist()} ({zero.dtype})")
    return _check("symmetric int8 (zero point 0)", problems, f"{count} Q/DQ nodes, int8, zero point 0")


def check_per_channel_weights(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    """Weights per output channel (axis 0, one scale per channel); activations one scale per tensor."""
    constants, producers, problems, weights = _constants(model), _producers(model), [], 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue  # reported by check_weighted_ops_dequantized
        weight, scale = constants.get(dq.input[0]), constants.get(dq.input[1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        if weight is None or scale is None or scale.size != weight.shape[0] or axis != 0:
            problems.append(f"{node.name} weights are not per output channel")
        weights += 1
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in constants and constants[node.input[1]].size != 1:
            problems.append(f"{node.name} quantizes an activation per channel")
    return _check("per-channel weights, per-tensor activations", problems, f"{weights} weighted ops")


def check_float_bias(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    constants, producers, problems = _constants(model), _producers(model), []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 2 and node.input[2]:
            source = producers.get(node.input[2])
            if source is not None and source.op_type == "DequantizeLinear" and constants[source.input[0]].dtype != np.int8:
                problems.append(f"{node.name} has a {constants[source.input[0]].dtype} quantized bias")
    return _check("float biases", problems, "every bias in float; TensorRT quantizes it")


def check_weighted_ops_dequantized(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    producers, problems, count = _producers(model), [], 0
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or _layer(node) in kept:
            continue
        count += 1
        for role, name in (("input", node.input[0]), ("weight", node.input[1])):
            if getattr(producers.get(name), "op_type", None) != "DequantizeLinear":
                problems.append(f"{node.name} {role} is not dequantized")
    kept_note = f", {len(kept)} kept in FP16 by the plan" if kept else ""
    return _check("every Conv/Gemm input and weight from DequantizeLinear", problems, f"{count} ops{kept_note}")


def _layer(node: onnx.NodeProto) -> str:
    return "fc" if node.op_type == "Gemm" else module_of(node.name)


def check_residual_add_inputs(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    """One input straight from a Conv (the add fuses into it), the other (the residual) dequantized.

    A residual that only layers kept out of INT8 read stays in float: that add runs in FP16.
    """
    producers, consumers, problems, count, in_float = _producers(model), _consumers(model), [], 0, 0
    for node in model.graph.node:
        if node.op_type != "Add":
            continue
        count += 1
        kinds = sorted(getattr(producers.get(name), "op_type", "graph input") for name in node.input)
        if kinds == ["Conv", "DequantizeLinear"]:
            continue
        residual = next((name for name in node.input if getattr(producers.get(name), "op_type", "") != "Conv"), None)
        readers = {_layer(c) for c in consumers.get(residual, []) if c.op_type in WEIGHTED_OPS}
        if kept and readers and readers <= kept:
            in_float += 1
        else:
            problems.append(f"{node.name} adds {' and '.join(kinds)}")
    note = f", {in_float} next to layers kept in FP16" if in_float else ""
    return _check("residual Add: a Conv output plus a dequantized residual", problems, f"{count} residual adds{note}")


def check_no_output_quantization(model: onnx.ModelProto, kept: frozenset[str] = frozenset()) -> dict:
    """A Conv writes straight into its ReLU, or into the Add it fuses with, so TensorRT makes one kernel.

    The one quantized Conv output allowed is a residual: the downsample branch feeding an
    Add whose other input comes straight from a Conv.
    """
    consumers, producers, problems, count = _consumers(model), _producers(model), [], 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        count += 1
        quantizers = [c for c in consumers.get(node.output[0], []) if c.op_type == "QuantizeLinear"]
        for after in (n for q in quantizers for n in _after_dq(q, consumers)):
            fuses = after.op_type == "Add" and any(
                getattr(producers.get(i), "op_type", None) == "Conv" for i in after.input)
            if not fuses:
                problems.append(f"{node.name} output is quantized before its {after.op_type}")
    return _check("no QuantizeLinear between a Conv and the ReLU or Add it fuses with", problems, f"{count} convs")


def _after_dq(quantize: onnx.NodeProto, consumers) -> list[onnx.NodeProto]:
    found = []
    for dq in consumers.get(quantize.output[0], []):
        found += consumers.get(dq.output[0], [])
    return found


TENSORRT_RULES: tuple[Callable[[onnx.ModelProto], dict], ...] = (
    check_symmetric_int8,
    check_per_channel_weights,
    check_float_bias,
    check_weighted_ops_dequantized,
    check_residual_add_inputs,
    check_no_output_quantization,
)
