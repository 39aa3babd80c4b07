"""x86 CPUs: OpenVINO IR (.xml + .bin) in FP32, FP16-compressed weights, or INT8 through NNCF."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..artifact import METADATA_KEY, TensorSpec, sidecar_path, staged_files, write_sidecar
from ..conversion.common import INPUT_NAME, OUTPUT_NAME, conv_of_batchnorm
from ..conversion.verify import compare_logits, enforce
from ..errors import ConversionError
from ..logs import quiet
from ..preprocess import Preprocess
from ..runtime.openvino import compile_config, no_telemetry, ov
from .base import PRECISIONS, ConvertJob, ConvertResult, Tolerance, artifact_record

PRESETS = ("performance", "mixed")


class OpenVinoTarget:
    name: ClassVar[str] = "x86"
    summary: ClassVar[str] = "OpenVINO IR for x86 CPUs (fp32, fp16 weights, int8 via NNCF)"
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    layout: ClassVar[str] = "NCHW"
    tolerance: ClassVar[Tolerance] = Tolerance()
    presets: ClassVar[tuple[str, ...]] = PRESETS
    keeps_float: ClassVar[bool] = True

    def check_options(self, precision: str, *, dynamic_batch: bool, opset: int) -> None:
        """OpenVINO accepts every option the pipeline has."""

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        return model_spec

    def convert(self, job: ConvertJob) -> ConvertResult:
        model = self._float_model(job)
        quantization = None
        if job.precision == "int8":
            model, quantization = self._quantize(model, job)
        elif job.precision == "fp16":
            quantization = {"kind": "fp16 weights (compressed), compute in the device's native precision"}
        final = job.out_dir / f"{job.stem}.xml"
        with tempfile.TemporaryDirectory(prefix="edgeres-") as scratch:
            # Verify what will be shipped: the IR saved with the same weight compression.
            probe = Path(scratch) / final.name
            ov.save_model(model, str(probe), compress_to_fp16=job.precision == "fp16")
            logits = run_ir(probe, job.preprocess.tensors(job.reference_crops), job.precision)
        verification = compare_logits(job.reference_logits, logits, job.reference_source)
        enforce(verification, job.precision, job.tolerance(self.tolerance), final.name)
        record = artifact_record(job, target=self.name, format="openvino",
                                 inputs=[_spec(model.inputs[0], self.layout)], outputs=[_spec(model.outputs[0], None)],
                                 calibration_method="nncf min-max statistics", quantization=quantization,
                                 verification=verification)
        model.set_rt_info(record.to_json(), [METADATA_KEY])
        with staged_files(job.out_dir) as stage:
            ov.save_model(model, str(stage / final.name), compress_to_fp16=job.precision == "fp16")
            write_sidecar(stage / final.name, record)
        files = (final, final.with_suffix(".bin"), sidecar_path(final))
        return ConvertResult(final, record, files)

    def _float_model(self, job: ConvertJob) -> ov.Model:
        job.log(f"Converting {job.arch} with openvino.convert_model (OpenVINO {ov.get_version().split('-')[0]})")
        shape = list(job.preprocess.input_shape)
        with quiet(), no_telemetry():
            try:
                model = ov.convert_model(job.module.eval(), example_input=torch.zeros(shape))
            except Exception as error:  # the frontend raises several types; all mean "conversion failed"
                raise ConversionError(f"OpenVINO could not convert the model: {error}") from None
        model.reshape({0: [-1 if job.dynamic_batch else 1, *shape[1:]]})
        model.inputs[0].get_tensor().set_names({INPUT_NAME})
        model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
        return model

    def _quantize(self, job_model: ov.Model, job: ConvertJob) -> tuple[ov.Model, dict]:
        preset = job.preset or "performance"
        job.log(f"Quantizing to INT8 with NNCF ({len(job.calibration)} calibration images, {preset} preset)")
        with quiet(), no_telemetry():
            import nncf

            nncf.set_log_level(logging.ERROR)
            dataset = nncf.Dataset(job.calibration.crops, lambda crop: job.preprocess.to_tensor(crop)[None])
            ignored = nncf.IgnoredScope(names=ops_of_modules(job_model, job.keep_float)) if job.keep_float else None
            model = nncf.quantize(
                job_model, dataset, preset=getattr(nncf.QuantizationPreset, preset.upper()),
                subset_size=len(job.calibration), fast_bias_correction=True, ignored_scope=ignored,
            )
        quantization = {
            "kind": "static",
            "weights": "int8 per-channel symmetric",
            "activations": "int8 per-tensor " + ("symmetric" if preset == "performance" else "asymmetric"),
            "preset": preset,
            "fast_bias_correction": True,
            "tool": f"nncf {nncf.__version__} quantize",
            "kept_float": list(job.keep_float),
        }
        return model, quantization


def ops_of_modules(model: ov.Model, modules: tuple[str, ...]) -> list[str]:
    """Friendly names of the Convolution/MatMul ops of PyTorch `modules` (fc, layer3.1.conv2).

    convert_model folds each BatchNorm into its Convolution, which loses its name; the
    BatchNorm's Add after it keeps `__module.layer1.0.bn1/...`, and in a ResNet bnK follows convK.
    """
    found: dict[str, list[str]] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Convolution", "MatMul"):
            continue
        names = [op.get_friendly_name()] + [t.get_node().get_friendly_name() for t in op.output(0).get_target_inputs()]
        scoped = next((n for n in names if n.startswith("__module.")), None)
        if scoped:
            found.setdefault(conv_of_batchnorm(scoped.split("/")[0].removeprefix("__module.")), []).append(
                op.get_friendly_name())
    missing = [m for m in modules if m not in found]
    if missing:
        raise ConversionError(f"no layer named {', '.join(missing)} in the model; layers are {', '.join(sorted(found))}")
    return [name for module in modules for name in found[module]]


def _spec(port: ov.Output, layout: str | None) -> TensorSpec:
    shape = [d.get_length() if d.is_static else "batch" for d in port.get_partial_shape()]
    return TensorSpec(name=port.get_any_name(), shape=shape, dtype=port.get_element_type().to_dtype().name,
                      layout=layout)


def run_ir(path: Path, inputs: np.ndarray, precision: str) -> np.ndarray:
    """Logits as the runtime backend will compute them (same compile settings)."""
    compiled = ov.Core().compile_model(str(path), "CPU", compile_config(precision, None, "LATENCY"))
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: item[None]})[0] for item in inputs])
