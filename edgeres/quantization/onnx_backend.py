"""A quantization plan applied to an ONNX graph with ONNX Runtime's own quantizer (QDQ).

Every activation tensor of the FP32 graph is mapped to its point of the plan, and the
plan's ranges are handed to `quantize_static` as its calibration cache: ONNX Runtime then
places the QuantizeLinear/DequantizeLinear pairs and computes scales as it always does.
Layers the plan keeps out of INT8 either stay in float (`nodes_to_exclude`) or, for NPUs
that want integers everywhere, get 16-bit activations (the A16W8 form) through
`TensorQuantOverrides`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..errors import ConversionError
from ..exporters.onnx_tools import module_of
from ..logs import quiet
from .design import QuantizationPlan

SHAPE_ONLY = ("Reshape", "Flatten", "Squeeze", "Identity")
PASS_THROUGH = ("Relu", *SHAPE_ONLY)
FLOAT, INT16, UINT16 = "float", "int16 activations", "uint16 activations"
SIXTEEN_BITS = {INT16: QuantType.QInt16, UINT16: QuantType.QUInt16}


def tensor_points(model: onnx.ModelProto) -> dict[str, str]:
    """{activation tensor: plan point} for every float tensor of a torchvision ResNet's ONNX graph."""
    points = {value.name: "input" for value in model.graph.input}
    producer_module = {}
    for node in model.graph.node:
        point = None
        if node.op_type in ("Conv", "Gemm"):
            point = producer_module[node.output[0]] = "fc" if node.op_type == "Gemm" else module_of(node.name)
        elif node.op_type == "Add":
            convs = [producer_module[i] for i in node.input if i in producer_module]
            point = block_of(convs[0]) if convs else None
        elif node.op_type == "MaxPool":
            point = "maxpool"
        elif node.op_type in ("GlobalAveragePool", "ReduceMean"):
            point = "avgpool"
        elif node.op_type in PASS_THROUGH:
            point = points.get(node.input[0])
        if point is None and node.op_type != "Constant":
            raise ConversionError(f"cannot place {node.op_type} node {node.name!r} in the ResNet's quantization "
                                  "plan; this graph is not a torchvision ResNet as exported by edgeres")
        for output in node.output:
            if point is not None:
                points[output] = point
    return points


def block_of(layer: str) -> str:
    """layer1.0.conv3 -> layer1.0; layer1.0.downsample.0 -> layer1.0."""
    return layer.split(".downsample")[0].rsplit(".", 1)[0]


def quantize(src: Path, dst: Path, plan: QuantizationPlan, *, higher_as: str, symmetric: bool,
             extra_options: dict | None = None, op_types: list[str] | None = None) -> dict:
    """INT8 QDQ of the FP32 ONNX `src` by `plan`; returns what the record says of it."""
    with tempfile.TemporaryDirectory() as scratch, quiet():
        prepared, cache = Path(scratch) / "prepared.onnx", Path(scratch) / "ranges.json"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        model = onnx.load(str(prepared))
        points = tensor_points(model)
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
            tensor: TensorData(lowest=np.array(plan.ranges[point][0], np.float32),
                               highest=np.array(plan.ranges[point][1], np.float32))
            for tensor, point in points.items()}), str(cache))
        options = {"ActivationSymmetric": symmetric, "WeightSymmetric": True, **(extra_options or {})}
        excluded = []
        if plan.higher and higher_as == FLOAT:
            excluded = nodes_of_layers(model, plan.higher)
        elif plan.higher:
            overrides = int16_overrides if higher_as == INT16 else converted_overrides
            options["TensorQuantOverrides"] = overrides(model, points, plan.higher, SIXTEEN_BITS[higher_as])
        quantize_static(
            str(prepared), str(dst), None, calibration_cache_path=str(cache), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, extra_options=options, nodes_to_exclude=excluded,
            op_types_to_quantize=op_types,
        )
    return {
        "kind": "static", "format": "QDQ", "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor " + ("symmetric" if symmetric else "asymmetric"),
        "tool": f"onnxruntime {ort.__version__} quantize_static (ranges from the edgeres plan)",
        "ranges_applied": f"{len(points)} tensors from {len(set(points.values()))} plan points",
    }


def nodes_of_layers(model: onnx.ModelProto, names: tuple[str, ...]) -> list[str]:
    """The node names of PyTorch layers (layer3.1.conv2, fc); a name with no node is an error."""
    by_layer: dict[str, list[str]] = {}
    for node in model.graph.node:
        key = "fc" if node.op_type == "Gemm" else module_of(node.name)
        by_layer.setdefault(key, []).append(node.name)
    missing = [name for name in names if name not in by_layer]
    if missing:
        known = sorted(k for k, nodes in by_layer.items() if any(n.endswith(("/Conv", "/Gemm")) for n in nodes))
        raise ConversionError(f"no layer named {', '.join(missing)} in the model; layers are {', '.join(known)}")
    return [node for name in names for node in by_layer[name]]


def int16_overrides(model: onnx.ModelProto, points: dict[str, str], names: tuple[str, ...],
                    quant_type: QuantType = QuantType.QInt16) -> dict:
    """16-bit activations (`quant_type`) on the input and output of each layer in `names` (weights stay int8)."""
    consumers = consumers_of(model)
    producers = {output: node for node in model.graph.node for output in node.output}
    wanted = set()
    for node in model.graph.node:
        if layer_of(node) in names:
            wanted.update([node.input[0], node.output[0]])
            source = node.input[0]
            # a Reshape/Flatten keeps its input's parameters, so the type is set where the values are made
            while source in producers and producers[source].op_type in SHAPE_ONLY:
                source = producers[source].input[0]
                wanted.add(source)
            # ONNX Runtime folds a Relu into the quantized conv before it: the Relu's output carries the Q pair
            wanted.update(c.output[0] for c in consumers.get(node.output[0], []) if c.op_type == "Relu")
    return {tensor: [{"quant_type": quant_type}] for tensor in sorted(wanted) if tensor in points}


def converted_overrides(model: onnx.ModelProto, points: dict[str, str], names: tuple[str, ...],
                        quant_type: QuantType) -> dict:
    """16-bit activations (`quant_type`) for each layer in `names` alone, converted from and to int8 at its edges.

    For compilers (QNN's HTP) whose quantized ops take one activation type in and out: every other op keeps
    int8 on both sides, and a Q/DQ pair converts where a kept layer meets one that is not (ONNX Runtime's
    `convert` override)."""
    kept_nodes = {node.name for node in model.graph.node if layer_of(node) in names}
    consumers = consumers_of(model)
    overrides: dict[str, list[dict]] = {}
    for node in model.graph.node:
        if node.name not in kept_nodes:
            continue
        inside = [node.output[0]]  # a Relu after the layer is folded into it: its output is the layer's
        inside += [c.output[0] for c in consumers.get(node.output[0], []) if c.op_type == "Relu"]
        for tensor in inside[:-1]:
            overrides[tensor] = [{"quant_type": quant_type}]
        readers = {c.name for c in consumers.get(inside[-1], []) if c.name not in kept_nodes}
        overrides[inside[-1]] = [{"quant_type": quant_type, **_convert(QuantType.QInt8, readers)}]
        source = node.input[0]  # made in int8 by a layer not kept (or the input), converted for this one
        if source not in overrides:
            kept_readers = {c.name for c in consumers.get(source, []) if c.name in kept_nodes}
            overrides[source] = [_convert(quant_type, kept_readers)]
    return {tensor: value for tensor, value in sorted(overrides.items()) if tensor in points}


def _convert(quant_type: QuantType, readers: set[str]) -> dict:
    return {"convert": {"quant_type": quant_type, "recv_nodes": readers}} if readers else {}


def consumers_of(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """{tensor: the nodes that read it}."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def layer_of(node: onnx.NodeProto) -> str | None:
    return "fc" if node.op_type == "Gemm" else module_of(node.name) if node.op_type == "Conv" else None
