"""TFLite conversion with litert-torch and quantization with ai-edge-quantizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConversionError
from ..logs import quiet
from ..runtime.tflite import IoDetails, interpreter, io_details, xnnpack_coverage

__all__ = ["IoDetails", "convert", "fp16_weights", "io_details", "uint8_pixels_float_scores", "with_metadata",
           "xnnpack_coverage"]
SIGNATURE = "serving_default"


def convert(module: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    """FP32 .tflite through litert-torch (torch.export underneath)."""
    with quiet():
        import litert_torch

        try:
            litert_torch.convert(module.eval(), (sample,)).export(str(path))
        except Exception as error:  # the converter raises many types; all mean "conversion failed"
            raise ConversionError(f"litert-torch could not convert the model: {error}") from None


def fp16_weights(src: Path, dst: Path) -> None:
    with quiet():
        from ai_edge_quantizer import quantizer, recipe_manager
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.qtyping import TFLOperationName

        recipe = recipe_manager.RecipeManager()
        recipe.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                      algorithm_key=AlgorithmName.FLOAT_CASTING)
        tool = quantizer.Quantizer(str(src))
        tool.load_quantization_recipe(recipe.get_quantization_recipe())
        tool.quantize().export_model(str(dst), overwrite=True)


def uint8_pixels_float_scores(model_bytes: bytes) -> bytes:
    """A full-integer model taking uint8 pixels (scale 1, zero point 0) and giving float32 scores.

    ai-edge-quantizer gives int8 ends: the input is the pixel minus 128, the output int8
    logits. Cameras give uint8, and MediaPipe Tasks and Coral take uint8 or float32 images
    and read float32 or uint8 scores, so a QUANTIZE op (uint8 -> int8, the same real values)
    goes in front and a DEQUANTIZE op after, as TensorFlow's own converter does for
    `inference_input_type=tf.uint8`. The graph's tensor names stay on its ends.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = _unpacked(model_bytes)
    graph = model.subgraphs[0]
    pixels, logits = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if pixels.type != schema.TensorType.INT8 or list(pixels.quantization.zeroPoint) != [-128]:
        raise ConversionError("expected an int8 input with zero point -128 (pixels minus 128)")
    inside = _new_tensor(graph, pixels, schema.TensorType.INT8, b"_int8")
    as_float = _new_tensor(graph, pixels, schema.TensorType.FLOAT32, b"_float")
    for op in graph.operators:
        op.inputs = [inside if index == graph.inputs[0] else index for index in op.inputs]
    pixels.type = schema.TensorType.UINT8
    pixels.quantization.zeroPoint = np.zeros(1, np.int64)
    graph.operators[:0] = [_operator(model, schema.BuiltinOperator.DEQUANTIZE, [graph.inputs[0]], [as_float]),
                           _operator(model, schema.BuiltinOperator.QUANTIZE, [as_float], [inside])]
    if logits.type == schema.TensorType.INT8:  # a float fc (kept out of INT8) gives float scores already
        _dequantize_output(model, graph, logits)
    return _packed(model, len(model_bytes))


def _dequantize_output(model, graph, logits) -> None:
    from ai_edge_litert import schema_py_generated as schema

    scores = _new_tensor(graph, logits, schema.TensorType.FLOAT32, b"")
    logits.name += b"_int8"
    graph.operators.append(_operator(model, schema.BuiltinOperator.DEQUANTIZE, [graph.outputs[0]], [scores]))
    for signature in model.signatureDefs or []:
        for entry in signature.outputs:
            if entry.tensorIndex == graph.outputs[0]:
                entry.tensorIndex = scores
    graph.outputs = [scores]


def _new_tensor(graph, like, tensor_type: int, suffix: bytes) -> int:
    from ai_edge_litert import schema_py_generated as schema

    tensor = schema.TensorT()
    tensor.shape, tensor.shapeSignature, tensor.type, tensor.buffer = like.shape, like.shapeSignature, tensor_type, 0
    tensor.name = like.name + suffix
    if tensor_type != schema.TensorType.FLOAT32:
        tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.scale = np.array(like.quantization.scale, np.float32)
        tensor.quantization.zeroPoint = np.array(like.quantization.zeroPoint, np.int64)
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _operator(model, builtin: int, inputs: list[int], outputs: list[int]):
    from ai_edge_litert import schema_py_generated as schema

    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    if builtin not in codes:
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
        model.operatorCodes.append(code)
        codes.append(builtin)
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = codes.index(builtin), inputs, outputs
    return op


def _unpacked(model_bytes: bytes):
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    for stored in model.buffers:
        # ai-edge-quantizer writes large tensors after the flatbuffer (offset buffers);
        # repacking would drop them, so bring them inline first.
        if getattr(stored, "offset", 0) > 1:
            stored.data = np.frombuffer(model_bytes, np.uint8, count=stored.size, offset=stored.offset)
            stored.offset, stored.size = 0, 0
    return model


def _packed(model, size_hint: int) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def with_metadata(model_bytes: bytes, entries: dict[str, bytes]) -> bytes:
    """The model with metadata entries {name: bytes} (replacing older ones of the same names).

    Repacking drops anything after the flatbuffer (a packed labels file): add it after.
    """
    from ai_edge_litert import schema_py_generated as schema

    model = _unpacked(model_bytes)
    model.metadata = model.metadata or []
    stored = {entry.name.decode(): entry for entry in model.metadata}
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, dtype=np.uint8)
        if name in stored:  # an entry written before: its buffer takes the new data, none is left orphaned
            model.buffers[stored[name].buffer] = buffer
            continue
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(model.buffers) - 1
        model.metadata.append(entry)
    return _packed(model, len(model_bytes))
