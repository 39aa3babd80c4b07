"""Raspberry Pi and other ARM CPUs: TFLite (LiteRT) fp32, fp16 weights, or full-integer int8.

The graph takes the camera's pixels as they are: RGB, NHWC, 0..255 (float32, or uint8 for
int8 models: what MediaPipe Tasks and Coral feed). Colour order, layout and mean/std live
inside the model, so the device only resizes and crops. Each file carries TFLite's
standard metadata (image input, normalisation, labels file), so MediaPipe's
ImageClassifier and the TFLite Task Library run it as it is, and edgeres' record.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..artifact import METADATA_KEY, ArtifactRecord, TensorSpec
from ..exporters import tflite_metadata, tflite_tools
from ..preprocess import Preprocess
from ..quantization import tflite_backend
from ..quantization.simulate import ALL_PLACEMENTS
from .base import Built, BuiltArtifact, ConvertJob, TargetBase


class RawPixelResNet(torch.nn.Module):
    """A torchvision ResNet that takes RGB pixels (N, H, W, 3) in 0..255.

    Two exact rewrites keep every op inside XNNPACK: a model trained on BGR has the
    channel swap folded into conv1's weights (no REVERSE op), and the max-pool's padding
    becomes zero padding (its input follows a ReLU, so zeros never win the max; no PADV2 op).
    """

    def __init__(self, module: torch.nn.Module, spec: Preprocess) -> None:
        super().__init__()
        module = copy.deepcopy(module).eval()
        if spec.color == "BGR":
            with torch.no_grad():
                module.conv1.weight.copy_(module.conv1.weight.flip(1))
        pool = module.maxpool
        module.maxpool = torch.nn.Sequential(torch.nn.ZeroPad2d(pool.padding),
                                             torch.nn.MaxPool2d(pool.kernel_size, pool.stride, 0))
        mean, std = np.asarray(spec.mean) * 255, np.asarray(spec.std) * 255  # RGB order, as the input
        self.register_buffer("mean", torch.tensor(mean.copy(), dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std.copy(), dtype=torch.float32).view(1, 3, 1, 1))
        self.module = module

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.module((pixels.permute(0, 3, 1, 2) - self.mean) / self.std)


class TfliteTarget(TargetBase):
    name: ClassVar[str] = "rpi"
    summary: ClassVar[str] = "TFLite/LiteRT for Raspberry Pi and ARM CPUs (fp32, fp16 weights, int8 full-integer)"
    layout: ClassVar[str] = "NHWC"
    placement: ClassVar[frozenset[str]] = ALL_PLACEMENTS
    higher_precision: ClassVar[str] = "float ops (still inside XNNPACK)"

    def __init__(self) -> None:
        self._exports: dict[int, Path] = {}

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        """Raw RGB pixels: the normalisation is inside the graph."""
        return model_spec.replace(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, color="RGB", layout="NHWC")

    def activation_grid(self, job: ConvertJob) -> str:
        return "asymmetric"  # ai-edge-quantizer: int8 activations with a zero point (LiteRT's kernels)

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        scratch.mkdir(parents=True, exist_ok=True)
        fp32 = self._export(plan.module if plan else job.module, job, scratch)
        path, quantization = scratch / f"{job.stem}.tflite", None
        if job.precision == "fp32":
            path.write_bytes(fp32.read_bytes())
        elif job.precision == "fp16":
            tflite_tools.fp16_weights(fp32, path)
            quantization = {"kind": "fp16 weights, float32 compute", "tool": "ai-edge-quantizer"}
        else:
            job.log(f"Quantizing to full-integer INT8 with ai-edge-quantizer ({len(plan.higher)} layers kept out)")
            mean = np.asarray(job.model_preprocess.mean) * 255
            quantization = tflite_backend.full_integer(fp32, path, plan, (float(mean.min()), float(mean.max())))
            path.write_bytes(tflite_tools.uint8_pixels_float_scores(path.read_bytes()))
            quantization["input"], quantization["output"] = "uint8 pixels (scale 1)", "float32 (dequantized in the graph)"
        model_bytes = path.read_bytes()
        details = tflite_tools.io_details(model_bytes)
        spec = job.preprocess
        if details.input_dtype != "float32":
            spec = spec.replace(dtype=details.input_dtype, input_scale=details.input_scale,
                                input_zero_point=details.input_zero_point)
        coverage = tflite_tools.xnnpack_coverage(model_bytes)
        if coverage["outside"]:
            job.log(f"Not delegated to XNNPACK (slow on a Pi): {', '.join(coverage['outside'])}")
        check = {"rule": "every op inside the XNNPACK delegate", "passed": not coverage["outside"],
                 "detail": f"{coverage['delegated']} of {coverage['ops']} ops delegated"
                           + (f"; outside: {', '.join(coverage['outside'])}" if coverage["outside"] else "")}
        artifact = BuiltArtifact(
            path, (path,), "tflite", spec,
            [TensorSpec(details.input_name, list(details.input_shape), details.input_dtype, self.layout)],
            [TensorSpec(details.output_name, list(details.output_shape), details.output_dtype)],
            quantization, [check])
        return Built([artifact])

    def embed_record(self, artifact: BuiltArtifact, record: ArtifactRecord) -> None:
        size = artifact.inputs[0].shape[1]
        standard = tflite_metadata.build(
            name=f"{record.arch} image classifier", version=record.edgeres_version,
            description=f"{record.arch}, {record.precision}, {len(record.labels)} classes; converted by edgeres",
            size=size, mean=0.0, std=1.0, labels=record.labels)
        model = tflite_tools.with_metadata(artifact.path.read_bytes(), {
            METADATA_KEY: record.to_json().encode(), tflite_metadata.NAME: standard})
        artifact.path.write_bytes(tflite_metadata.with_labels_file(model, record.labels))

    def _export(self, module, job: ConvertJob, scratch: Path) -> Path:
        if id(module) not in self._exports:
            path = scratch.parent / f".export-{len(self._exports)}.tflite"
            job.log("Converting with litert-torch (the official PyTorch to TFLite converter)")
            sample = torch.zeros(job.preprocess.input_shape)
            tflite_tools.convert(RawPixelResNet(module, job.model_preprocess), sample, path)
            self._exports[id(module)] = path
        return self._exports[id(module)]
