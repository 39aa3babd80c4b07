"""From a loaded model and options to a verified artifact of one target and precision."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..calibration import CalibrationSet, read_image_folder
from ..calibration.folder import DEFAULT_CALIB_SIZE, Progress, no_progress
from ..errors import CalibrationError, EdgeresError
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..targets import get_target
from ..targets.base import CALIBRATION_METHODS, PRECISIONS, ConvertJob, ConvertResult

# Without calibration images, exports are checked on seeded random inputs.
RANDOM_REFERENCE_COUNT = 8
MAX_REFERENCE_SAMPLES = 64
MIN_IMGSZ = 32


@dataclass(frozen=True)
class ConvertOptions:
    target: str = "onnx"
    precision: str = "fp32"
    out_dir: Path = Path("out")
    calib: Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = "minmax"
    imgsz: int = 224
    dynamic_batch: bool = False
    opset: int = 18
    name: str | None = None
    seed: int = 0
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeresError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise EdgeresError(
                f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.calib_method!r}"
            )
        if self.imgsz < MIN_IMGSZ:
            raise EdgeresError(f"--imgsz must be at least {MIN_IMGSZ}, got {self.imgsz}")
        if self.calib_size < 1:
            raise CalibrationError(f"--calib-size must be at least 1, got {self.calib_size}")
        if Path(self.out_dir).is_file():
            raise EdgeresError(f"--out {self.out_dir} is a file; give a folder for the artifacts")
        if self.precision == "int8" and self.calib is None:
            raise CalibrationError("--int8 needs calibration images: add --calib DIR (a folder of images)")


def convert(
    model: LoadedModel,
    options: ConvertOptions,
    *,
    progress: Progress = no_progress,
    log: Callable[[str], None] = print,
) -> ConvertResult:
    """Convert `model` for `options.target`, verify it against PyTorch, write it atomically."""
    target = get_target(options.target)
    target.check_options(options.precision, dynamic_batch=options.dynamic_batch, opset=options.opset,
                         preset=options.preset)
    preprocess = Preprocess.imagenet(options.imgsz, layout=target.layout)
    calibration = None
    if options.calib is not None:
        calibration = read_image_folder(options.calib, preprocess, size=options.calib_size,
                                        seed=options.seed, progress=progress)
        summary = calibration.summary
        log(f"Read {summary['used']} images from {options.calib} ({summary['skipped']} unreadable, skipped)")
    inputs, source = _reference_inputs(calibration, preprocess, options.seed)
    job = ConvertJob(
        module=model.module, arch=model.arch, labels=model.labels, source=model.source,
        preprocess=preprocess, precision=options.precision, out_dir=Path(options.out_dir),
        stem=options.name or f"{model.arch}_{target.name}_{options.precision}",
        calibration=calibration if options.precision == "int8" else None,
        calibration_method=options.calib_method, opset=options.opset,
        dynamic_batch=options.dynamic_batch, preset=options.preset, log=log, reference_inputs=inputs,
        reference_logits=torch_logits(model.module, inputs, preprocess.layout), reference_source=source,
    )
    return target.convert(job)


def _reference_inputs(calibration: CalibrationSet | None, preprocess: Preprocess,
                      seed: int) -> tuple[np.ndarray, str]:
    if calibration is not None:
        samples = calibration.samples[:MAX_REFERENCE_SAMPLES]
        return np.stack(samples), "calibration images"
    shape = (RANDOM_REFERENCE_COUNT, *preprocess.input_shape[1:])
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32), "random normal inputs"


def torch_logits(module: torch.nn.Module, inputs: np.ndarray, layout: str = "NCHW",
                 batch: int = 32) -> np.ndarray:
    if layout == "NHWC":
        inputs = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2))
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            outputs.append(module(torch.from_numpy(inputs[start : start + batch])).numpy())
    return np.concatenate(outputs)
