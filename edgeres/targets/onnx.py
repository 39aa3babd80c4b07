"""ONNX for ONNX Runtime on any CPU: FP32, FP16, or INT8 in QDQ form."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import onnx

from ..artifact import ArtifactRecord
from ..exporters import onnx_tools
from ..preprocess import Preprocess
from ..quantization import onnx_backend
from ..quantization.points import fold_batchnorm
from ..quantization.simulate import ALL_PLACEMENTS
from .base import Built, BuiltArtifact, ConvertJob, TargetBase


class OnnxTarget(TargetBase):
    name: ClassVar[str] = "onnx"
    summary: ClassVar[str] = "ONNX for ONNX Runtime on any CPU (fp32, fp16, int8 QDQ)"
    layout: ClassVar[str] = "NCHW"
    placement: ClassVar[frozenset[str]] = ALL_PLACEMENTS
    higher_precision: ClassVar[str] = "float"
    kept_as: ClassVar[str] = onnx_backend.FLOAT  # how ONNX Runtime keeps a layer out of INT8
    symmetric_activations: ClassVar[bool] = False
    ort_quantization_options: ClassVar[dict] = {}  # extra_options for ONNX Runtime's quantize_static
    ort_op_types: ClassVar[list[str] | None] = None  # op types to quantize; None: all it can

    def __init__(self) -> None:
        self._exports = onnx_tools.ExportCache()

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        return model_spec

    def activation_grid(self, job: ConvertJob) -> str:
        return "symmetric" if self.symmetric_activations else "asymmetric"

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        scratch.mkdir(parents=True, exist_ok=True)
        # FP32 and FP16 export the folded model too (exact in float), so every precision's ONNX has the
        # same tensor names: TensorRT 8 applies the INT8 calibration cache to the FP32 ONNX by name.
        fp32 = self._export(plan.module if plan else self._folded(job.module), job, scratch)
        path, quantization = scratch / f"{job.stem}.onnx", None
        if job.precision == "fp32":
            path.write_bytes(fp32.read_bytes())
        elif job.precision == "fp16":
            onnx_tools.to_fp16(fp32, path)
            quantization = {"kind": "fp16 weights and compute", "io": "float32"}
        else:
            job.log(f"Quantizing to INT8 QDQ with ONNX Runtime ({len(plan.higher)} layers kept out)")
            quantization = onnx_backend.quantize(fp32, path, plan, higher_as=self.kept_as,
                                                 symmetric=self.symmetric_activations,
                                                 extra_options=self.ort_quantization_options,
                                                 op_types=self.ort_op_types)
            self.after_quantization(path, plan)
        model = onnx.load(str(path))
        checks = self.check_graph(model, job, plan)
        inputs, outputs = onnx_tools.tensor_specs(model, self.layout)
        artifact = BuiltArtifact(path, (path,), "onnx", job.preprocess, inputs, outputs, quantization, checks)
        return Built([artifact], self.companion_files(model, job))

    def _folded(self, module):
        if not hasattr(self, "_folded_module"):
            self._folded_module = fold_batchnorm(module)
        return self._folded_module

    def _export(self, module, job: ConvertJob, scratch: Path) -> Path:
        return self._exports.get(module, job.model_preprocess.input_shape, scratch, opset=job.opset,
                                 dynamic_batch=job.dynamic_batch, log=job.log,
                                 message=f"Exporting {job.arch} to ONNX (opset {job.opset})")

    def embed_record(self, artifact: BuiltArtifact, record: ArtifactRecord) -> None:
        model = onnx.load(str(artifact.path))
        onnx_tools.embed_record(model, record)
        onnx.save(model, str(artifact.path))

    def companion_files(self, model: onnx.ModelProto, job: ConvertJob) -> dict[str, bytes]:
        """Files a target writes beside the ONNX, by name (a TensorRT calibration cache, say)."""
        return {}

    def check_graph(self, model: onnx.ModelProto, job: ConvertJob, plan) -> list[dict]:
        """Rules a target requires of the final graph; plain ONNX requires none beyond verification."""
        return []

    def after_quantization(self, path: Path, plan) -> None:
        """A target's own changes to the QDQ graph, in place."""
