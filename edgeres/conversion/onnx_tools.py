"""ONNX export, FP16 conversion and INT8 QDQ quantization, shared by the ONNX-based targets."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..artifact import METADATA_KEY, ArtifactRecord, TensorSpec
from ..calibration import CalibrationSet
from ..calibration.onnxruntime import CalibrationReader
from ..errors import ConversionError
from ..logs import quiet
from ..preprocess import Preprocess
from .common import INPUT_NAME, OUTPUT_NAME

ORT_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8"}


def export_fp32(module: torch.nn.Module, input_shape: tuple[int, ...], path: Path, *,
                opset: int, dynamic_batch: bool) -> None:
    """torch.export-based ONNX export of an eval-mode model; batch 1 static unless asked."""
    example = torch.zeros(input_shape)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic_batch else None
    with quiet():
        try:
            program = torch.onnx.export(
                module.eval(), (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, optimize=True, verbose=False,
            )
        except Exception as error:  # the exporter raises many types; all mean "export failed"
            raise ConversionError(f"PyTorch could not export the model to ONNX: {error}") from None
    program.save(str(path))
    model = onnx.load(str(path))
    mean_pools_to_global_pools(model)
    for node in model.graph.node:
        del node.metadata_props[:]  # the exporter's stack traces name paths on this machine
    onnx.save(model, str(path))


def mean_pools_to_global_pools(model: onnx.ModelProto) -> int:
    """Replace ReduceMean over H and W (keepdims) by the equivalent GlobalAveragePool.

    torch.export writes the ResNet head's average pool as ReduceMean, which ONNX
    Runtime's quantizer leaves in float; GlobalAveragePool gets its QDQ pair, and NPU
    compilers map it directly. Returns the number of nodes replaced.
    """
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    replaced = 0
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or len(node.input) != 2:
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = constants.get(node.input[1])
        if axes is None or sorted(int(a) % 4 for a in axes.tolist()) != [2, 3] or attributes.get("keepdims", 1) != 1:
            continue
        node.op_type = "GlobalAveragePool"
        del node.input[1:]
        del node.attribute[:]
        replaced += 1
    used = {name for node in model.graph.node for name in node.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    return replaced


def to_fp16(src: Path, dst: Path) -> None:
    """FP16 weights and compute; the input and output stay float32 so callers need not change."""
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def quantize_int8(src: Path, dst: Path, calibration: CalibrationSet, preprocess: Preprocess, *,
                  method: str, symmetric_activations: bool = False) -> dict:
    """Static INT8 in QDQ form: per-channel int8 weights, int8 activations from calibration."""
    with tempfile.TemporaryDirectory() as scratch, quiet():
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=False)
        options = {"ActivationSymmetric": symmetric_activations, "WeightSymmetric": True}
        quantize_static(
            str(prepared), str(dst), CalibrationReader(calibration, preprocess, INPUT_NAME),
            quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=ORT_CALIBRATION[method], extra_options=options,
        )
    return {
        "kind": "static",
        "format": "QDQ",
        "weights": "int8 per-channel symmetric",
        "activations": "int8 per-tensor " + ("symmetric" if symmetric_activations else "asymmetric"),
        "calibration_method": method,
        "tool": f"onnxruntime {ort.__version__} quantize_static",
    }


def tensor_specs(model: onnx.ModelProto, layout: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(value: onnx.ValueInfoProto, with_layout: bool) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim]
        return TensorSpec(name=value.name, shape=shape, dtype=_ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
                          layout=layout if with_layout else None)

    return [spec(v, True) for v in model.graph.input], [spec(v, False) for v in model.graph.output]


def embed_record(model: onnx.ModelProto, record: ArtifactRecord) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=record.to_json())


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits for each input, one at a time (the graph may be batch 1)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: item[None]})[0] for item in inputs])
