"""What every target implements, and what the pipeline hands it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, ClassVar, Protocol

import numpy as np

from ..artifact import ArtifactRecord, TensorSpec
from ..calibration import CalibrationSet
from ..preprocess import Preprocess

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Tolerance:
    """How closely an artifact must reproduce the PyTorch model to be written at all."""

    fp32_max_abs: float = 1e-3  # logits, absolute
    fp16_max_rel: float = 2e-2  # largest logit error / largest |logit|
    int8_top1: float = 0.90  # top-1 agreement with PyTorch on calibration images


@dataclass(frozen=True)
class ConvertJob:
    """One conversion: a loaded model to one artifact of one precision."""

    module: object  # torch.nn.Module; typed loosely so this file imports no torch
    arch: str
    labels: list[str]
    source: dict
    preprocess: Preprocess  # the artifact's input, as its record will say
    model_preprocess: Preprocess  # what the PyTorch module takes (NCHW, normalised)
    precision: str
    out_dir: Path
    stem: str
    calibration: CalibrationSet | None
    calibration_method: str = "minmax"
    opset: int = 18
    dynamic_batch: bool = False
    preset: str | None = None  # quantization preset, for targets that have presets
    profile: dict | None = None  # the device profile converted for, if one was named
    log: Callable[[str], None] = print
    # Crops (uint8 BGR, as resize_and_crop makes them) and PyTorch's logits for them:
    # every export is checked against these.
    reference_crops: list[np.ndarray] | None = None
    reference_logits: np.ndarray | None = None
    reference_source: str = ""
    golden: dict | None = None  # the record's description of the golden samples
    keep_float: tuple[str, ...] = ()  # PyTorch module names (conv1, layer3.1.conv2, fc) left unquantized
    # False while an accuracy budget searches: it judges INT8 on labelled data instead.
    check_int8_agreement: bool = True

    def tolerance(self, target_tolerance: Tolerance) -> Tolerance:
        if self.check_int8_agreement:
            return target_tolerance
        return replace(target_tolerance, int8_top1=0.0)


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    record: ArtifactRecord
    files: tuple[Path, ...]  # everything written, sidecar included
    companions: tuple[Path, ...] = ()  # other artifacts the same conversion wrote (mobile: the .ptl beside the .pte)


def artifact_record(job: ConvertJob, *, target: str, format: str, inputs: list[TensorSpec],
                    outputs: list[TensorSpec], calibration_method: str, quantization: dict | None,
                    verification: dict, checks: list[dict] | None = None,
                    preprocess: Preprocess | None = None) -> ArtifactRecord:
    """The record every target writes: the job's facts plus what the target found."""
    calibration = None
    if job.precision == "int8":
        calibration = {**job.calibration.summary, "method": calibration_method}
    return ArtifactRecord(
        arch=job.arch, num_classes=len(job.labels), labels=list(job.labels),
        preprocess=(preprocess or job.preprocess).to_dict(), precision=job.precision, target=target,
        format=format, inputs=inputs, outputs=outputs, source=dict(job.source), calibration=calibration,
        quantization=quantization, checks=list(checks or []), verification=verification,
        device_profile=job.profile, golden=job.golden,
    )


class Target(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    layout: ClassVar[str]  # NCHW or NHWC input
    tolerance: ClassVar[Tolerance]

    presets: ClassVar[tuple[str, ...]]  # quantization presets it accepts, () for none
    keeps_float: ClassVar[bool]  # whether INT8 can leave named layers in float (for an accuracy budget)

    def check_options(self, precision: str, *, dynamic_batch: bool, opset: int) -> None:
        """Raise TargetError for options this target does not accept (before any work is done).

        The precision and preset are checked by the pipeline against `precisions` and
        `presets`; this is for the target's own rules.
        """

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        """The artifact's input, derived from the PyTorch model's (same resize and crop)."""

    def convert(self, job: ConvertJob) -> ConvertResult:
        """Write the artifact and its sidecar into job.out_dir; return what was written."""
