"""Raspberry Pi and other ARM CPUs: TFLite (LiteRT) fp32, fp16 weights, or full-integer int8.

The graph takes the camera's pixels as they are: BGR, NHWC, 0..255. Colour order,
layout and mean/std live inside the model, so the device only resizes and crops; the
int8 model's input has scale 1, so an int8 input is the pixel minus 128.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..artifact import TensorSpec, sidecar_path, staged_files, write_sidecar
from ..conversion import tflite_tools
from ..conversion.verify import compare_logits, enforce
from ..errors import TargetError
from ..preprocess import Preprocess
from .base import PRECISIONS, ConvertJob, ConvertResult, Tolerance, artifact_record


class RawPixelResNet(torch.nn.Module):
    """A torchvision ResNet that takes BGR pixels (N, H, W, 3) in 0..255.

    Two exact rewrites keep every op inside XNNPACK: the BGR->RGB swap is folded into
    conv1's weights (no REVERSE op), and the max-pool's padding becomes zero padding
    (its input follows a ReLU, so zeros never win the max; no PADV2 op).
    """

    def __init__(self, module: torch.nn.Module, spec: Preprocess) -> None:
        super().__init__()
        module = copy.deepcopy(module).eval()
        if spec.color == "RGB":
            with torch.no_grad():
                module.conv1.weight.copy_(module.conv1.weight.flip(1))
        pool = module.maxpool
        module.maxpool = torch.nn.Sequential(torch.nn.ZeroPad2d(pool.padding),
                                             torch.nn.MaxPool2d(pool.kernel_size, pool.stride, 0))
        mean, std = np.asarray(spec.mean) * 255, np.asarray(spec.std) * 255
        if spec.color == "RGB":
            mean, std = mean[::-1], std[::-1]
        self.register_buffer("mean", torch.tensor(mean.copy(), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std.copy(), dtype=torch.float32).view(1, 3, 1, 1))
        self.module = module

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module((pixels.permute(0, 3, 1, 2) - self.mean) / self.std)


class TfliteTarget:
    name: ClassVar[str] = "rpi"
    summary: ClassVar[str] = "TFLite/LiteRT for Raspberry Pi and ARM CPUs (fp32, fp16 weights, int8 full-integer)"
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    layout: ClassVar[str] = "NHWC"
    tolerance: ClassVar[Tolerance] = Tolerance()
    presets: ClassVar[tuple[str, ...]] = ()
    keeps_float: ClassVar[bool] = False  # full-integer for XNNPACK's int8 kernels; a float island is not supported here

    def check_options(self, precision: str, *, dynamic_batch: bool, opset: int) -> None:
        if dynamic_batch:
            raise TargetError("TFLite models here have a static batch of 1: drop --dynamic-batch")

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        """Raw pixels: the normalisation is inside the graph."""
        return model_spec.replace(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, color="BGR", layout="NHWC")

    def convert(self, job: ConvertJob) -> ConvertResult:
        final = job.out_dir / f"{job.stem}.tflite"
        with tempfile.TemporaryDirectory(prefix="edgeres-") as scratch:
            built, quantization = self._build(job, Path(scratch))
            model_bytes = built.read_bytes()
        details = tflite_tools.io_details(model_bytes)
        spec = job.preprocess
        if details.input_dtype != "float32":
            spec = spec.replace(dtype=details.input_dtype, input_scale=details.input_scale,
                                input_zero_point=details.input_zero_point)
        logits = tflite_tools.run(model_bytes, spec.tensors(job.reference_crops))
        verification = compare_logits(job.reference_logits, logits, job.reference_source)
        enforce(verification, job.precision, job.tolerance(self.tolerance), final.name)
        coverage = tflite_tools.xnnpack_coverage(model_bytes)
        if coverage["outside"]:
            job.log(f"Not delegated to XNNPACK (slow on a Pi): {', '.join(coverage['outside'])}")
        check = {"rule": "every op inside the XNNPACK delegate", "passed": not coverage["outside"],
                 "detail": f"{coverage['delegated']} of {coverage['ops']} ops delegated"
                           + (f"; outside: {', '.join(coverage['outside'])}" if coverage["outside"] else "")}
        record = artifact_record(
            job, target=self.name, format="tflite", preprocess=spec,
            inputs=[TensorSpec(details.input_name, list(details.input_shape), details.input_dtype, self.layout)],
            outputs=[TensorSpec(details.output_name, list(details.output_shape), details.output_dtype)],
            calibration_method="min-max (ai-edge-quantizer)", quantization=quantization, checks=[check],
            verification=verification)
        with staged_files(job.out_dir) as stage:
            (stage / final.name).write_bytes(tflite_tools.with_metadata(model_bytes, record.to_json()))
            write_sidecar(stage / final.name, record)
        return ConvertResult(final, record, (final, sidecar_path(final)))

    def _build(self, job: ConvertJob, scratch: Path) -> tuple[Path, dict | None]:
        fp32 = scratch / "fp32.tflite"
        job.log("Converting with litert-torch (the official PyTorch to TFLite converter)")
        sample = torch.from_numpy(job.preprocess.tensors(job.reference_crops[:1]))
        tflite_tools.convert(RawPixelResNet(job.module, job.model_preprocess), sample, fp32)
        if job.precision == "fp32":
            return fp32, None
        if job.precision == "fp16":
            tflite_tools.fp16_weights(fp32, scratch / "fp16.tflite")
            return scratch / "fp16.tflite", {"kind": "fp16 weights, float32 compute", "tool": "ai-edge-quantizer"}
        job.log(f"Quantizing to full-integer INT8 with {len(job.calibration)} calibration images")
        inputs = (job.preprocess.to_tensor(crop)[None] for crop in job.calibration.crops)
        quantization = tflite_tools.full_integer(fp32, scratch / "int8.tflite", inputs)
        return scratch / "int8.tflite", quantization
