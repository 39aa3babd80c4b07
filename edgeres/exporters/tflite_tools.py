"""TFLite conversion with litert-torch and quantization with ai-edge-quantizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifact import METADATA_KEY
from ..errors import ConversionError
from ..logs import quiet
from ..runtime.tflite import IoDetails, interpreter, io_details, xnnpack_coverage

__all__ = ["IoDetails", "convert", "fp16_weights", "io_details", "with_metadata",
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
