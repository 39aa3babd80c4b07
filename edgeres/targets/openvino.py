"""x86 CPUs: OpenVINO IR (.xml + .bin) in FP32, FP16-compressed weights, or INT8 through NNCF.

The IR is converted from the same ONNX export as the ONNX targets, so its tensors keep
the ONNX names the quantization plan is mapped to. It takes raw pixels (uint8, NHWC,
BGR: a cropped OpenCV frame as it is); OpenVINO's PrePostProcessor puts the colour
order, normalisation and layout change inside the graph, where the CPU plugin fuses
them, so the host only resizes and crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx

from ..artifact import METADATA_KEY, ArtifactRecord, TensorSpec
from ..exporters import onnx_tools
from ..exporters.common import INPUT_NAME, OUTPUT_NAME
from ..errors import ConversionError
from ..logs import quiet
from ..preprocess import Preprocess
from ..quantization import onnx_backend, openvino_backend
from ..quantization.simulate import BRANCHES
from ..runtime.openvino import no_telemetry, ov
from .base import PRECISIONS, Built, BuiltArtifact, ConvertJob, Tolerance

PRESETS = tuple(openvino_backend.PRESET_GRIDS)  # performance (the default), mixed


class OpenVinoTarget:
    name: ClassVar[str] = "x86"
    summary: ClassVar[str] = "OpenVINO IR for x86 CPUs (fp32, fp16 weights, int8 via NNCF)"
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    layout: ClassVar[str] = "NHWC"
    tolerance: ClassVar[Tolerance] = Tolerance()
    presets: ClassVar[tuple[str, ...]] = PRESETS
    placement: ClassVar[frozenset[str]] = frozenset({BRANCHES})  # NNCF leaves the logits in float
    higher_precision: ClassVar[str] = "float"

    def __init__(self) -> None:
        self._exports = onnx_tools.ExportCache()

    def check_options(self, precision: str, *, dynamic_batch: bool, opset: int) -> None:
        """OpenVINO accepts every option the pipeline has."""

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        """Raw pixels: the normalisation is inside the graph (see `_pixel_input`)."""
        return model_spec.replace(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, color="BGR", layout="NHWC",
                                  dtype="uint8", input_scale=1.0, input_zero_point=0)

    def activation_grid(self, job: ConvertJob) -> str:
        return openvino_backend.PRESET_GRIDS[job.preset or "performance"]

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        scratch.mkdir(parents=True, exist_ok=True)
        onnx_path = self._export(plan.module if plan else job.module, job, scratch)
        model = self._read(onnx_path, job)
        quantization = None
        if job.precision == "int8":
            preset = job.preset or "performance"
            job.log(f"Quantizing to INT8 with NNCF ({preset} preset, {len(plan.higher)} layers kept out)")
            points = onnx_backend.tensor_points(onnx.load(str(onnx_path)))
            inputs = [job.model_preprocess.to_tensor(crop)[None] for crop in job.calibration.crops]
            model, quantization = openvino_backend.quantize(model, plan, points, inputs, preset=preset)
        elif job.precision == "fp16":
            quantization = {"kind": "fp16 weights (compressed), compute in the device's native precision"}
        model = _pixel_input(model, job.model_preprocess)
        path = scratch / f"{job.stem}.xml"
        self._save(model, path, job.precision)
        artifact = BuiltArtifact(path, (path, path.with_suffix(".bin")), "openvino", job.preprocess,
                                 [_spec(model.inputs[0], self.layout)], [_spec(model.outputs[0], None)], quantization)
        return Built([artifact])

    def embed_record(self, artifact: BuiltArtifact, record: ArtifactRecord) -> None:
        model = ov.Core().read_model(str(artifact.path))
        model.set_rt_info(record.to_json(), [METADATA_KEY])
        self._save(model, artifact.path, record.precision)

    def _export(self, module, job: ConvertJob, scratch: Path) -> Path:
        return self._exports.get(module, job.model_preprocess.input_shape, scratch, opset=job.opset,
                                 dynamic_batch=job.dynamic_batch, log=job.log,
                                 message=f"Exporting {job.arch} to ONNX for OpenVINO {ov.get_version().split('-')[0]}")

    def _read(self, onnx_path: Path, job: ConvertJob) -> "ov.Model":
        with quiet(), no_telemetry():
            try:
                model = ov.convert_model(str(onnx_path))
            except Exception as error:  # the frontend raises several types; all mean "conversion failed"
                raise ConversionError(f"OpenVINO could not convert the model: {error}") from None
        model.inputs[0].get_tensor().set_names({INPUT_NAME})
        model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
        return model

    @staticmethod
    def _save(model: "ov.Model", path: Path, precision: str) -> None:
        # save_model writes the .bin beside the .xml; a re-save (to embed the record) replaces both.
        tmp = path.with_name(f".{path.stem}.tmp.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=precision == "fp16")
        tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
        tmp.replace(path)


def _pixel_input(model: "ov.Model", model_spec: Preprocess) -> "ov.Model":
    """The model with a uint8 NHWC BGR input and `model_spec`'s preprocessing in the graph."""
    from openvino.preprocess import ColorFormat, PrePostProcessor

    ppp = PrePostProcessor(model)
    tensor = ppp.input().tensor()
    tensor.set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC")).set_color_format(ColorFormat.BGR)
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    steps = ppp.input().preprocess().convert_element_type(ov.Type.f32)
    if model_spec.color == "RGB":
        steps.convert_color(ColorFormat.RGB)
    order = slice(None) if model_spec.color == "RGB" else slice(None, None, -1)  # mean/std are stored RGB
    steps.mean([255 * float(m) for m in model_spec.mean[order]])
    steps.scale([255 * float(s) for s in model_spec.std[order]])
    return ppp.build()


def _spec(port: "ov.Output", layout: str | None) -> TensorSpec:
    shape = [d.get_length() if d.is_static else "batch" for d in port.get_partial_shape()]
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=port.get_element_type().to_dtype().name,
                      layout=layout)
