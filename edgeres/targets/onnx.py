"""ONNX for ONNX Runtime on any CPU: FP32, FP16, or INT8 in QDQ form."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar

import onnx

from ..artifact import sidecar_path, staged_files, write_sidecar
from ..conversion import onnx_tools
from ..conversion.verify import compare_logits, enforce
from ..errors import TargetError
from ..preprocess import Preprocess
from .base import PRECISIONS, ConvertJob, ConvertResult, Tolerance, artifact_record


class OnnxTarget:
    name: ClassVar[str] = "onnx"
    summary: ClassVar[str] = "ONNX for ONNX Runtime on any CPU (fp32, fp16, int8 QDQ)"
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    layout: ClassVar[str] = "NCHW"
    tolerance: ClassVar[Tolerance] = Tolerance()
    presets: ClassVar[tuple[str, ...]] = ()
    keeps_float: ClassVar[bool] = True
    symmetric_activations: ClassVar[bool] = False
    ort_quantization_options: ClassVar[dict] = {}  # extra_options for ONNX Runtime's quantize_static
    ort_op_types: ClassVar[list[str] | None] = None  # op types to quantize; None: all it can

    def check_options(self, precision: str, *, dynamic_batch: bool, opset: int) -> None:
        if opset < 18:
            # torch.export's ONNX exporter writes opset 18 at the lowest.
            raise TargetError(f"the ONNX exporter writes opset 18 or newer, got --opset {opset}")

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        return model_spec

    def convert(self, job: ConvertJob) -> ConvertResult:
        with tempfile.TemporaryDirectory(prefix="edgeres-") as scratch:
            built, quantization = self._build(job, Path(scratch))
            model = onnx.load(str(built))
            checks = self.check_graph(model, job)
            logits = onnx_tools.run_onnx(built, job.preprocess.tensors(job.reference_crops))
        final = job.out_dir / f"{job.stem}.onnx"
        verification = compare_logits(job.reference_logits, logits, job.reference_source)
        enforce(verification, job.precision, job.tolerance(self.tolerance), final.name)
        inputs, outputs = onnx_tools.tensor_specs(model, self.layout)
        companions = self.companion_files(model, job)
        if companions:
            quantization = {**(quantization or {}), "companion_files": sorted(companions)}
        record = artifact_record(job, target=self.name, format="onnx", inputs=inputs, outputs=outputs,
                                 calibration_method=job.calibration_method, quantization=quantization,
                                 checks=checks, verification=verification)
        onnx_tools.embed_record(model, record)
        with staged_files(job.out_dir) as stage:
            onnx.save(model, str(stage / final.name))
            for name, data in companions.items():
                (stage / name).write_bytes(data)
            write_sidecar(stage / final.name, record)
        written = (final, *(job.out_dir / name for name in sorted(companions)), sidecar_path(final))
        return ConvertResult(final, record, written)

    def companion_files(self, model: onnx.ModelProto, job: ConvertJob) -> dict[str, bytes]:
        """Files a target writes beside the ONNX, by name (a TensorRT calibration cache, say)."""
        return {}

    def check_graph(self, model: onnx.ModelProto, job: ConvertJob) -> list[dict]:
        """Rules a target requires of the final graph; plain ONNX requires none beyond verification."""
        return []

    def _build(self, job: ConvertJob, scratch: Path) -> tuple[Path, dict | None]:
        fp32 = scratch / "fp32.onnx"
        job.log(f"Exporting {job.arch} to ONNX (opset {job.opset})")
        onnx_tools.export_fp32(job.module, job.preprocess.input_shape, fp32,
                               opset=job.opset, dynamic_batch=job.dynamic_batch)
        if job.precision == "fp32":
            return fp32, None
        if job.precision == "fp16":
            onnx_tools.to_fp16(fp32, scratch / "fp16.onnx")
            return scratch / "fp16.onnx", {"kind": "fp16 weights and compute", "io": "float32"}
        job.log(f"Quantizing to INT8 with {len(job.calibration)} calibration images ({job.calibration_method})")
        quantization = onnx_tools.quantize_int8(fp32, scratch / "int8.onnx", job.calibration, job.preprocess,
                                                method=job.calibration_method,
                                                symmetric_activations=self.symmetric_activations,
                                                keep_float=job.keep_float,
                                                extra_options=self.ort_quantization_options,
                                                op_types=self.ort_op_types)
        self.after_quantization(scratch / "int8.onnx", job)
        return scratch / "int8.onnx", quantization

    def after_quantization(self, path: Path, job: ConvertJob) -> None:
        """A target's own changes to the QDQ graph, in place."""
