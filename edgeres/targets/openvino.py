"""x86 CPUs: OpenVINO IR (.xml + .bin) in FP32, FP16-compressed weights, or INT8 through NNCF.

The IR is converted from the same ONNX export as the ONNX targets, so its tensors keep
the ONNX names the quantization plan is mapped to. It takes raw pixels (uint8, NHWC,
BGR: an OpenCV frame as it is); OpenVINO's PrePostProcessor puts the colour order,
normalisation and layout change inside the graph, where the CPU plugin fuses them, so
the host only resizes and crops.

Its input is the centre square of the resized frame (resize x resize) and the graph
takes the centre crop itself: that is what OpenVINO Model API's "crop" resize feeds
(the frame's centre square, resized to the input), so Model API, reading the
`model_info` written beside the record, sees the crop edgeres sees. edgeres' own
runtime reshapes the input to the crop and feeds crops; the graph's crop is then empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx

from ..artifact import METADATA_KEY, ArtifactRecord, TensorSpec
from ..exporters import onnx_tools
from ..exporters.common import INPUT_NAME, OUTPUT_NAME
from ..errors import ConversionError
from ..logs import quiet
from ..preprocess import Preprocess
from ..quantization import onnx_backend, openvino_backend
from ..quantization.simulate import BRANCHES
from ..runtime.openvino import CROP_KEY, MODEL_INFO_KEY, no_telemetry, ov
from .base import Built, BuiltArtifact, ConvertJob, TargetBase



class OpenVinoTarget(TargetBase):
    name: ClassVar[str] = "x86"
    summary: ClassVar[str] = "OpenVINO IR for x86 CPUs (fp32, fp16 weights, int8 via NNCF)"
    layout: ClassVar[str] = "NHWC"
    placement: ClassVar[frozenset[str]] = frozenset({BRANCHES})  # NNCF leaves the logits in float
    higher_precision: ClassVar[str] = "float"

    def __init__(self) -> None:
        self._exports = onnx_tools.ExportCache()

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
            quantization = {"kind": "fp16 weights (compressed), computed in fp32 unless a faster mode is asked for"}
        model = _crop_inside(_pixel_input(model, job.model_preprocess), job.preprocess)
        path = scratch / f"{job.stem}.xml"
        self._save(model, path, job.precision)
        artifact = BuiltArtifact(path, (path, path.with_suffix(".bin")), "openvino", job.preprocess,
                                 [_spec(model.inputs[0], self.layout)], [_spec(model.outputs[0], None)], quantization)
        return Built([artifact])

    def embed_record(self, artifact: BuiltArtifact, record: ArtifactRecord) -> None:
        model = ov.Core().read_model(str(artifact.path))
        model.set_rt_info(record.to_json(), [METADATA_KEY])
        for key, value in model_api_info(record).items():
            model.set_rt_info(value, [MODEL_INFO_KEY, key])
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


def _crop_inside(model: "ov.Model", spec: Preprocess) -> "ov.Model":
    """The model behind a (resize x resize) pixel input whose centre (crop x crop) it takes itself.

    The crop's offset is computed from the input's shape, so an input reshaped to the
    crop (edgeres' runtime does) is passed through whole. For an odd margin the offset
    rounds as torchvision's centre crop does (half to even), so both ways give the same pixels.
    """
    import openvino.opset13 as ops

    old = model.get_parameters()[0]
    batch = old.get_partial_shape()[0]
    pixels = ops.parameter(ov.PartialShape([batch, spec.resize, spec.resize, 3]), ov.Type.u8, name=INPUT_NAME)
    pixels.set_layout(ov.Layout("NHWC"))  # so ov.set_batch and layout-aware tools still find the batch
    margin = spec.resize - spec.crop
    half_up = int(margin % 2 == 1 and (margin // 2) % 2 == 1)  # round(k + 0.5) is k + 1 for odd k
    size = ops.gather(ops.shape_of(pixels, output_type="i64"), ops.constant(np.array([1, 2])), ops.constant(0))
    start = ops.divide(ops.add(ops.subtract(size, ops.constant(np.array([spec.crop] * 2))),
                               ops.constant(np.array([half_up] * 2))), ops.constant(np.array([2, 2])))
    crop = ops.slice(pixels, start, ops.add(start, ops.constant(np.array([spec.crop] * 2))),
                     ops.constant(np.array([1, 1])), ops.constant(np.array([1, 2])))
    for consumer in list(old.output(0).get_target_inputs()):
        consumer.replace_source_output(crop.output(0))
    cropped = ov.Model(model.get_results(), [pixels], model.get_friendly_name())
    cropped.inputs[0].get_tensor().set_names({INPUT_NAME})
    cropped.set_rt_info(str(spec.crop), [CROP_KEY])
    return cropped


def model_api_info(record: ArtifactRecord) -> dict[str, str]:
    """What OpenVINO Model API reads from rt_info["model_info"] to run the IR as a classifier.

    The graph already normalises and swaps colours (mean 0, scale 1, no channel reversal),
    so Model API only resizes the frame's centre square to the input. Its labels are one
    space-separated string: spaces inside a label become underscores there.
    """
    return {
        "model_type": "Classification",
        "labels": " ".join("_".join(label.split()) or "_" for label in record.labels),
        "mean_values": "0 0 0", "scale_values": "1 1 1", "reverse_input_channels": "False",
        "resize_type": "crop", "embedded_processing": "False",
        "topk": str(min(5, len(record.labels))), "output_raw_scores": "True",
    }


def _spec(port: "ov.Output", layout: str | None) -> TensorSpec:
    shape = [d.get_length() if d.is_static else "batch" for d in port.get_partial_shape()]
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=port.get_element_type().to_dtype().name,
                      layout=layout)
