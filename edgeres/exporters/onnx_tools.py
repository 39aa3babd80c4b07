"""ONNX export, FP16 conversion and INT8 QDQ quantization, shared by the ONNX-based targets."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import torch
from onnxruntime.transformers.float16 import convert_float_to_float16

from ..artifact import METADATA_KEY, ArtifactRecord, TensorSpec
from ..errors import ConversionError
from ..logs import quiet
from .common import INPUT_NAME, OUTPUT_NAME, conv_of_batchnorm

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
                onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT8: "int8"}


# torch.export's ONNX exporter converts up to what the onnx package defines; beyond that it falls
# back without a word, so the written opset is checked too (export_fp32).
MAX_OPSET = onnx.defs.onnx_opset_version()


class ExportCache:
    """One FP32 ONNX export per float model, reused by every attempt of one conversion."""

    def __init__(self) -> None:
        self._paths: dict[int, Path] = {}  # by id: each exported module stays alive (held by its plan) while the conversion runs

    def get(self, module: torch.nn.Module, input_shape: tuple[int, ...], scratch: Path, *, opset: int,
            dynamic_batch: bool, log, message: str) -> Path:
        if id(module) not in self._paths:
            path = scratch.parent / f".export-{len(self._paths)}.onnx"
            log(message)
            export_fp32(module, input_shape, path, opset=opset, dynamic_batch=dynamic_batch)
            self._paths[id(module)] = path
        return self._paths[id(module)]


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
    written = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ConversionError(f"the ONNX exporter wrote opset {written} where --opset {opset} was asked for; "
                              f"give --opset {written}, or an opset this PyTorch can write")
    mean_pools_to_global_pools(model)
    name_after_modules(model)
    for node in model.graph.node:
        del node.metadata_props[:]  # the exporter's stack traces name paths on this machine
    onnx.save(model, str(path))


def name_after_modules(model: onnx.ModelProto) -> None:
    """Name each Conv and Gemm node after the PyTorch module whose weights it holds: layer1.0.conv1/Conv.

    The exporter folds each BatchNorm into the Conv before it and names the result after
    the BatchNorm's scope (layer1.0.bn1); in a ResNet convK pairs with bnK and downsample.0
    with downsample.1. Readable names let a user (or an accuracy budget) keep layers in float.
    """
    taken: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
        if not scopes:
            continue
        module = conv_of_batchnorm(ast.literal_eval(scopes)[-2])
        name = f"{module}/{node.op_type}"
        node.name = name if name not in taken else f"{name}_{len(taken)}"
        taken.add(node.name)


def module_of(node_name: str) -> str:
    return node_name.split("/")[0]


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


def tensor_specs(model: onnx.ModelProto, layout: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    def spec(value: onnx.ValueInfoProto, with_layout: bool) -> TensorSpec:
        tensor = value.type.tensor_type
        shape = [dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or "?") for dim in tensor.shape.dim]
        return TensorSpec(name=value.name, shape=shape, dtype=_ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
                          layout=layout if with_layout else None)

    return [spec(v, True) for v in model.graph.input], [spec(v, False) for v in model.graph.output]


def embed_record(model: onnx.ModelProto, record: ArtifactRecord) -> None:
    """The whole record under `edgeres`, and what other ONNX tools show without knowing edgeres: the
    producer, a description (ONNX Runtime's modelmeta.description, Netron), and labels and preprocessing
    as plain metadata keys."""
    pre = record.preprocess
    plain = {
        METADATA_KEY: record.to_json(),
        "labels": json.dumps(record.labels),
        "task": "image classification",
        "preprocess": (f"{pre['color']} image, resize shorter side to {pre['resize']}, centre crop {pre['crop']}, "
                       f"/255, minus mean {pre['mean']}, divided by std {pre['std']}, {pre['layout']}"),
    }
    for prop in list(model.metadata_props):
        if prop.key in plain:
            model.metadata_props.remove(prop)
    for key, value in plain.items():
        model.metadata_props.add(key=key, value=value)
    model.producer_name, model.producer_version = "edgeres", record.edgeres_version
    model.doc_string = (f"{record.arch} image classifier, {record.num_classes} classes, {record.precision}, made by "
                        f"edgeres for target {record.target}. Preprocessing: {plain['preprocess']}.")


def run_onnx(path: Path, inputs: np.ndarray) -> np.ndarray:
    """Logits for each input, one at a time (the graph may be batch 1)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: item[None]})[0] for item in inputs])
