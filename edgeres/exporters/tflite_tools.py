"""TFLite conversion with litert-torch and quantization with ai-edge-quantizer."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from ..artifact import METADATA_KEY
from ..errors import ConversionError
from ..logs import quiet
from ..runtime.tflite import IoDetails, interpreter, io_details, xnnpack_coverage

__all__ = ["IoDetails", "convert", "fp16_weights", "full_integer", "io_details", "run", "with_metadata",
           "xnnpack_coverage"]
SIGNATURE = "serving_default"
PIXEL_RANGE = (0.0, 255.0)


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


def full_integer(src: Path, dst: Path, inputs: Iterable[np.ndarray]) -> dict:
    """Static int8: int8 weights (per channel) and activations, int8 input and output.

    The input's range is pinned to the pixel range 0..255 rather than what the
    calibration images happened to span, so its scale is exactly 1: a camera pixel p
    enters as p - 128 with no rounding.
    """
    with quiet():
        import ai_edge_quantizer
        from ai_edge_quantizer import quantizer, recipe

        tool = quantizer.Quantizer(str(src))
        tool.load_quantization_recipe(recipe.static_wi8_ai8())
        loaded = interpreter(src, 1)
        input_name = loaded.get_signature_list()[SIGNATURE]["inputs"][0]
        input_tensor = loaded.get_input_details()[0]["name"]
        statistics = tool.calibrate({SIGNATURE: [{input_name: item} for item in inputs]})
        statistics[input_tensor] = {"min": np.array([PIXEL_RANGE[0]], np.float32),
                                    "max": np.array([PIXEL_RANGE[1]], np.float32)}
        tool.quantize(statistics).export_model(str(dst), overwrite=True)
    return {
        "kind": "static full-integer",
        "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor",
        "input": "int8, range pinned to pixels 0..255 (scale 1)",
        "tool": f"ai-edge-quantizer {getattr(ai_edge_quantizer, '__version__', '')} static_wi8_ai8".strip(),
    }


def run(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    """Dequantized logits for each input, through the same interpreter a device uses."""
    from ..runtime.tflite import TfliteBackend

    loaded = interpreter(model_bytes, None)
    backend = TfliteBackend.__new__(TfliteBackend)
    backend._interpreter = loaded
    backend._input, backend._output = loaded.get_input_details()[0], loaded.get_output_details()[0]
    return backend.run(inputs)


def with_metadata(model_bytes: bytes, text: str, name: str = METADATA_KEY) -> bytes:
    """The model with a metadata entry `name` holding `text` (replacing an older one)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(model_bytes, 0)
    for stored in model.buffers:
        # ai-edge-quantizer writes large tensors after the flatbuffer (offset buffers);
        # repacking would drop them, so bring them inline first.
        if getattr(stored, "offset", 0) > 1:
            stored.data = np.frombuffer(model_bytes, np.uint8, count=stored.size, offset=stored.offset)
            stored.offset, stored.size = 0, 0
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(text.encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
