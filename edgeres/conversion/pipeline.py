"""From a loaded model and options to a verified artifact of one target and precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..calibration import CalibrationSet, read_calibration
from ..calibration.folder import DEFAULT_CALIB_SIZE, Progress, no_progress
from ..errors import CalibrationError, EdgeresError, TargetError
from ..golden import GOLDEN_COUNT, golden_path, golden_record, write_golden
from ..logs import set_verbose
from ..models import LoadedModel
from ..preprocess import Preprocess
from ..targets import REGISTRY, get_target, resolve_target
from ..targets.base import CALIBRATION_METHODS, PRECISIONS, ConvertJob, ConvertResult, Target

# Without calibration images, exports are checked on seeded random images.
RANDOM_REFERENCE_COUNT = 8
MAX_REFERENCE_SAMPLES = 64
MIN_IMGSZ = 32


@dataclass(frozen=True)
class ConvertOptions:
    target: str = "onnx"
    precision: str = "fp32"
    out_dir: Path = Path("out")
    calib: Path | str | None = None  # folder, video, camera index, .npy/.npz or path list
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_every: int | None = None  # video or camera: every Nth frame
    calib_method: str = "minmax"
    imgsz: int = 224
    dynamic_batch: bool = False
    opset: int = 18
    name: str | None = None
    seed: int = 0
    preset: str | None = None
    verbose: bool = False
    keep_float: tuple[str, ...] = ()  # INT8: PyTorch modules to leave in float (conv1, layer3.1.conv2, fc)
    check_int8_agreement: bool = True  # an accuracy budget judges INT8 on labelled data instead

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
        if self.keep_float and self.precision != "int8":
            raise EdgeresError("--keep-float is for INT8: it names layers to leave unquantized")
        if self.precision == "int8" and self.calib is None:
            raise CalibrationError("--int8 needs calibration images: add --calib DIR (a folder of images, "
                                   "or a video, camera index, .npy/.npz or list of image paths)")


def convert(
    model: LoadedModel,
    options: ConvertOptions,
    *,
    progress: Progress = no_progress,
    log: Callable[[str], None] = print,
) -> ConvertResult:
    """Convert `model` for `options.target`, verify it against PyTorch, write it atomically."""
    set_verbose(options.verbose)
    target, profile = resolve_target(options.target)
    check_target_options(target, options)
    model_spec = Preprocess.imagenet(options.imgsz)
    calibration = None
    if options.calib is not None:
        calibration = read_calibration(options.calib, model_spec, size=options.calib_size, seed=options.seed,
                                       every=options.calib_every, progress=progress)
        summary = calibration.summary
        log(f"Read {summary['used']} images from {options.calib} ({summary['skipped']} unreadable, skipped)")
    crops, source = _reference_crops(calibration, model_spec, options.seed)
    job = ConvertJob(
        module=model.module, arch=model.arch, labels=model.labels, source=model.source,
        preprocess=target.input_spec(model_spec), model_preprocess=model_spec, precision=options.precision,
        out_dir=Path(options.out_dir), stem=options.name or f"{model.arch}_{profile.name if profile else target.name}_{options.precision}",
        calibration=calibration if options.precision == "int8" else None,
        calibration_method=options.calib_method, opset=options.opset, dynamic_batch=options.dynamic_batch,
        preset=options.preset, profile=profile.to_dict() if profile else None, log=log, reference_crops=crops,
        keep_float=tuple(options.keep_float), check_int8_agreement=options.check_int8_agreement,
        reference_logits=torch_logits(model.module, model_spec.tensors(crops)), reference_source=source,
    )
    golden_frames = np.stack(crops[:GOLDEN_COUNT])
    golden_reference = torch_logits(model.module, model_spec.batch(golden_frames))
    job = replace(job, golden=golden_record(golden_frames, golden_reference, job.stem, asdict(target.tolerance)))
    return _with_golden(target.convert(job), golden_frames, golden_reference)


def _with_golden(result: ConvertResult, frames: np.ndarray, reference: np.ndarray) -> ConvertResult:
    """Each artifact's own logits on the golden frames, through its runtime, as `edgeres verify` will run them."""
    from ..runtime.classifier import Classifier

    written = []
    try:
        for artifact in (result.path, *result.companions):
            expected = Classifier(artifact).logits_batch(list(frames))
            written.append(write_golden(golden_path(artifact), frames, reference, expected))
    except BaseException:
        for path in (*result.files, *written):  # an artifact whose record names a missing golden file is not shipped
            path.unlink(missing_ok=True)
        raise
    return replace(result, files=(*result.files, *written))


def check_target_options(target: Target, options: ConvertOptions) -> None:
    """What every target declares (precisions, presets), then the target's own rules."""
    if options.precision not in target.precisions:
        hint = ": add --int8 --calib DIR" if target.precisions == ("int8",) else ""
        raise TargetError(f"target {target.name} makes {', '.join(target.precisions)}, not {options.precision}{hint}")
    if options.preset is not None and options.preset not in target.presets:
        if target.presets:
            raise TargetError(f"--preset must be one of {', '.join(target.presets)}, got {options.preset!r}")
        with_presets = [name for name in REGISTRY if get_target(name).presets]
        raise TargetError(f"--preset is for target {', '.join(with_presets)}; target {target.name} has no presets")
    if options.keep_float and not target.keeps_float:
        can = [name for name in REGISTRY if get_target(name).keeps_float]
        raise TargetError(f"target {target.name} quantizes every layer and cannot keep {', '.join(options.keep_float)} "
                          f"in float; targets that can: {', '.join(can)}")
    target.check_options(options.precision, dynamic_batch=options.dynamic_batch, opset=options.opset)


def _reference_crops(calibration: CalibrationSet | None, spec: Preprocess,
                     seed: int) -> tuple[list[np.ndarray], str]:
    if calibration is not None:
        return calibration.crops[:MAX_REFERENCE_SAMPLES], "calibration images"
    rng = np.random.default_rng(seed)
    crops = [rng.integers(0, 256, (spec.crop, spec.crop, 3), dtype=np.uint8) for _ in range(RANDOM_REFERENCE_COUNT)]
    return crops, "random images"


def torch_logits(module: torch.nn.Module, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """PyTorch's logits for model inputs (N, 3, H, W), normalised as the model expects."""
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            outputs.append(module(torch.from_numpy(inputs[start : start + batch])).numpy())
    return np.concatenate(outputs)
