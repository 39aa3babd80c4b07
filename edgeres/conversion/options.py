"""What a conversion is asked for, and every check made on it before any work is done.

The defaults and ranges here are the CLI's too: its help and choices are built from them.
What each target accepts is its registry row's (edgeres.targets.registry).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from ..calibration import DEFAULT_CALIB_SIZE
from ..errors import CalibrationError, EdgeresError, TargetError
from ..exporters.common import MIN_OPSET
from ..quantization.ranges import METHODS
from ..runtime.base import check_threads
from ..targets import profile_of
from ..targets.registry import PRECISIONS, refusal

MIN_IMGSZ, MAX_IMGSZ = 32, 1024  # above 1024 a ResNet's activations alone outgrow a device's memory
DEFAULT_IMGSZ = 224
DEFAULT_OPSET = MIN_OPSET
DEFAULT_MIN_AGREEMENT = 0.96
DEFAULT_MAX_DROP = 0.3  # top-1 points, with labelled --val images
DEFAULT_MAX_KEPT = 16
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
CALIBRATION_METHODS = ("auto", *METHODS)
FINETUNE_MODES = ("auto", "always", "never")  # auto: the search's last remedy, when calibration misses the bar
DEFAULT_FINETUNE_MINUTES = 10.0
MAX_FINETUNE_STEPS = 100_000


@dataclass(frozen=True)
class ConvertOptions:
    target: str = "onnx"
    precision: str = "fp32"
    out_dir: Path = Path("out")
    calib: Path | str | None = None  # folder, video, camera index, .npy/.npz or path list
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_every: int | None = None  # video or camera: every Nth frame
    calib_method: str = "auto"  # how activation ranges are chosen; auto: the best of them, simulated
    bias_correction: bool | None = None  # None: chosen with the range method
    imgsz: int = DEFAULT_IMGSZ
    dynamic_batch: bool = False
    opset: int | None = None  # targets made from an ONNX export only; None: DEFAULT_OPSET
    name: str | None = None
    seed: int = 0
    preset: str | None = None
    verbose: bool = False
    keep: tuple[str, ...] = ()  # INT8: layers kept out of INT8 (conv1, layer3.1.conv2, fc), in the target's higher precision
    val: Path | None = None  # labelled ImageFolder the INT8 bar and the report are measured on
    max_drop: float | None = None  # INT8 bar: top-1 points lost on --val (default DEFAULT_MAX_DROP there)
    min_agreement: float = DEFAULT_MIN_AGREEMENT  # INT8 bar: top-1 agreement with FP32
    max_kept: int = DEFAULT_MAX_KEPT  # INT8: at most this many layers kept out of INT8 by the search
    report: bool = True  # measure latency and write report.json/md/png
    threads: int | None = None  # for the report's latency
    finetune: str = "auto"  # INT8: quantization-aware fine-tuning (FINETUNE_MODES)
    finetune_minutes: float = DEFAULT_FINETUNE_MINUTES  # its time budget; the best state so far is kept
    finetune_steps: int | None = None  # None: a number of passes over the training images
    train: Path | None = None  # labelled ImageFolder: fine-tuning adds the task loss on it

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgeresError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.calib_method not in CALIBRATION_METHODS:
            raise EdgeresError(f"--calib-method must be one of {', '.join(CALIBRATION_METHODS)}, "
                               f"got {self.calib_method!r}")
        if not MIN_IMGSZ <= self.imgsz <= MAX_IMGSZ:
            raise EdgeresError(f"--imgsz must be between {MIN_IMGSZ} and {MAX_IMGSZ} (larger inputs outgrow the "
                               f"memory of the devices edgeres targets), got {self.imgsz}")
        if self.calib_size < 1:
            raise CalibrationError(f"--calib-size must be at least 1, got {self.calib_size}")
        if Path(self.out_dir).is_file():
            raise EdgeresError(f"--out {self.out_dir} is a file; give a folder for the artifacts")
        if self.name is not None:
            check_name(self.name)
        self._check_int8()
        check_threads(self.threads)
        if self.opset is not None:
            from ..exporters.onnx_tools import MAX_OPSET  # onnx's newest: only where an opset is given

            if not MIN_OPSET <= self.opset <= MAX_OPSET:
                raise EdgeresError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (what this ONNX exporter "
                                   f"writes), got {self.opset}")
        self._check_target()

    def _check_target(self) -> None:
        """What the target's registry row does not take, refused before a model is even loaded."""
        profile = profile_of(self.target)
        why = refusal(profile.target if profile else self.target, self.precision, preset=self.preset,
                      dynamic_batch=self.dynamic_batch, opset=self.opset)
        if why:
            raise TargetError(why)

    def _check_int8(self) -> None:
        if self.precision != "int8" and (self.keep or self.max_drop is not None):
            raise EdgeresError("--keep-float and --max-drop are for INT8: add --int8 --calib DIR")
        if self.precision == "int8" and self.calib is None:
            raise CalibrationError("--int8 needs calibration images: add --calib DIR (a folder of images, "
                                   "or a video, camera index, .npy/.npz or list of image paths)")
        if self.max_drop is not None and not math.isfinite(self.max_drop):
            raise EdgeresError(f"--max-drop must be a number of percentage points, got {self.max_drop}")
        if not math.isfinite(self.min_agreement):
            raise EdgeresError(f"--min-agreement must be a fraction between 0 and 1, got {self.min_agreement}")
        if self.max_drop is not None and self.max_drop < 0:
            raise EdgeresError(f"--max-drop is in percentage points and cannot be negative, got {self.max_drop:g}")
        if self.max_drop is not None and self.val is None:
            raise EdgeresError("--max-drop needs labelled images to measure the drop: add --val DIR (an ImageFolder)")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise EdgeresError(f"--min-agreement is a fraction between 0 and 1, got {self.min_agreement:g}")
        if self.max_kept < 0:
            raise EdgeresError(f"--max-kept cannot be negative, got {self.max_kept}")
        self._check_finetune()

    def _check_finetune(self) -> None:
        if self.finetune not in FINETUNE_MODES:
            raise EdgeresError(f"finetune must be one of {', '.join(FINETUNE_MODES)}, got {self.finetune!r}")
        tuning = (self.train is not None or self.finetune_steps is not None
                  or self.finetune_minutes != DEFAULT_FINETUNE_MINUTES)
        if self.precision != "int8" and (self.finetune != "auto" or tuning):
            raise EdgeresError("--finetune, --no-finetune, --finetune-minutes, --finetune-steps and --train are for "
                               "INT8: add --int8 --calib DIR")
        if self.finetune == "never" and tuning:
            raise EdgeresError("--train, --finetune-minutes and --finetune-steps set the fine-tuning; they cannot go "
                               "with --no-finetune")
        if not (math.isfinite(self.finetune_minutes) and self.finetune_minutes > 0):
            raise EdgeresError(f"--finetune-minutes must be a positive number of minutes, got {self.finetune_minutes}")
        if self.finetune_steps is not None and not 1 <= self.finetune_steps <= MAX_FINETUNE_STEPS:
            raise EdgeresError(f"--finetune-steps must be between 1 and {MAX_FINETUNE_STEPS}, got "
                               f"{self.finetune_steps}")
        if self.train is not None and not Path(self.train).is_dir():
            raise EdgeresError(f"--train {self.train} is not a folder: give a labelled ImageFolder "
                               "(DIR/<class>/images), as eval reads them")


def check_name(name: str) -> str:
    """An artifact name is one plain file name: no folders, no '..', no leading dot."""
    if not NAME_PATTERN.match(name) or ".." in name:
        raise EdgeresError(f"--name {name!r} is not a plain artifact name: use letters, digits, '.', '_', '-' and "
                           "'+' (no '/', no '..', not starting with a dot), e.g. --name resnet18_v2")
    return name

