"""A quantization plan applied to a TFLite model with ai-edge-quantizer (full-integer int8).

litert-torch keeps the graph's order: its CONV_2D and FULLY_CONNECTED ops are the
ResNet's layers in order (checked by their weight shapes), each ADD a block, MEAN the
average pool. Every op output gets its plan point's range as ai-edge-quantizer's
calibration statistics; the graph input keeps the pixel range 0..255 (scale 1). Layers the
plan keeps out of INT8 become float ops (NO_QUANTIZE), which XNNPACK still runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConversionError
from ..logs import quiet
from .design import QuantizationPlan
from .points import layers

SIGNATURE = "serving_default"
PIXEL_RANGE = (0.0, 255.0)
# Ops whose output shares its input's parameters in ai-edge-quantizer; their statistics are ignored.
SAME_AS_INPUT = ("PAD", "MAX_POOL_2D", "RESHAPE", "TRANSPOSE")
# The uint8-in / float-out adapters of a finished int8 file (tflite_tools.uint8_pixels_float_scores).
IO_ADAPTERS = ("QUANTIZE", "DEQUANTIZE")


def op_points(model_bytes: bytes, module, mean_pixels: tuple[float, float]) -> tuple[dict[str, tuple], dict[str, str]]:
    """({tensor: (low, high) or point name}, {layer: its op's output tensor}) for the FP32 model."""
    from ai_edge_litert import schema_py_generated as schema

    names = {value: key for key, value in schema.BuiltinOperator.__dict__.items() if not key.startswith("_")}
    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    graph = model.subgraphs[0]
    tensor = lambda index: graph.tensors[index].name.decode()  # noqa: E731
    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        ops.append((names[max(code.builtinCode, code.deprecatedBuiltinCode)], op))
    expected = layers(module)
    weighted = [(kind, op) for kind, op in ops if kind in ("CONV_2D", "FULLY_CONNECTED")]
    if len(weighted) != len(expected):
        raise ConversionError(f"the TFLite graph has {len(weighted)} conv/fc ops, the ResNet {len(expected)} layers")
    named = dict(module.named_modules())
    layer_of, layer_output = {}, {}
    for (kind, op), layer in zip(weighted, expected):
        shape = tuple(graph.tensors[op.inputs[1]].shape)
        weight = tuple(named[layer.name].weight.shape)
        if shape != ((weight[0], weight[2], weight[3], weight[1]) if len(weight) == 4 else weight):
            raise ConversionError(f"TFLite op order does not follow the ResNet at {layer.name}: weights {shape}")
        layer_of[id(op)] = layer.name
        layer_output[layer.name] = tensor(op.outputs[0])
    points: dict[str, tuple | str] = {tensor(graph.inputs[0]): PIXEL_RANGE}
    producer = {}
    for kind, op in ops:
        out = tensor(op.outputs[0])
        producer[out] = id(op)
        if id(op) in layer_of:
            points[out] = layer_of[id(op)]
        elif kind == "ADD":
            convs = [layer_of[producer[tensor(i)]] for i in op.inputs if producer.get(tensor(i)) in layer_of]
            points[out] = convs[0].split(".downsample")[0].rsplit(".", 1)[0]
        elif kind == "SUB" and not layer_output_seen(points, layer_of):  # pixels minus the mean
            points[out] = (PIXEL_RANGE[0] - mean_pixels[1], PIXEL_RANGE[1] - mean_pixels[0])
        elif kind in ("MUL", "DIV") and not layer_output_seen(points, layer_of):  # ... divided by the std
            points[out] = "input"
        elif kind in ("MEAN", "SUM"):  # the average pool (a SUM where it pools a single position)
            points[out] = "avgpool"
        elif kind in ("MUL", "DIV") and points.get(tensor(op.inputs[0])) == "avgpool":
            points[out] = "avgpool"
        elif kind not in SAME_AS_INPUT + IO_ADAPTERS:
            raise ConversionError(f"cannot place TFLite op {kind} ({out}) in the ResNet's quantization plan")
    return points, layer_output


def layer_output_seen(points: dict, layer_of: dict) -> bool:
    return any(isinstance(point, str) and point != "input" for point in points.values())


def full_integer(src: Path, dst: Path, plan: QuantizationPlan, mean_pixels: tuple[float, float]) -> dict:
    """Static int8 by the plan: int8 weights per channel, int8 activations, int8 input (scale 1)."""
    with quiet():
        import ai_edge_quantizer
        from ai_edge_quantizer import quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.qtyping import TFLOperationName

        points, layer_output = op_points(src.read_bytes(), plan.module, mean_pixels)
        statistics = {}
        for name, point in points.items():
            low, high = plan.ranges[point] if isinstance(point, str) else point
            statistics[name] = {"min": np.array([low], np.float32), "max": np.array([high], np.float32)}
        recipe = recipe_manager.RecipeManager()
        recipe.add_static_config(".*", TFLOperationName.ALL_SUPPORTED, activation_num_bits=8, weight_num_bits=8)
        for layer in plan.higher:
            recipe.add_quantization_config("^" + re.escape(layer_output[layer] + ";") + "$",
                                           TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
        tool = quantizer.Quantizer(str(src))
        tool.load_quantization_recipe(recipe.get_quantization_recipe())
        tool.quantize(statistics).export_model(str(dst), overwrite=True)
    return {
        "kind": "static full-integer", "weights": "int8 per-channel symmetric", "activations": "int8 per-tensor",
        "input": "int8, range pinned to pixels 0..255 (scale 1)",
        "tool": f"ai-edge-quantizer {getattr(ai_edge_quantizer, '__version__', '')} (ranges from the edgeres plan)",
        "ranges_applied": f"{len(statistics)} tensors",
    }
