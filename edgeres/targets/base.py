"""What every target implements, and what the pipeline hands it.

A target only builds: it exports the model, quantizes it by the pipeline's plan with its
own toolchain, and returns the files it made. The pipeline verifies every artifact
through the runtime backend a device uses, and writes the record, golden samples and
report as one set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

from ..artifact import ArtifactRecord, TensorSpec
from .registry import REGISTRY, Accepts

if TYPE_CHECKING:  # not at import: the CLI's --help lists the targets on a device without OpenCV
    from ..calibration import CalibrationSet
    from ..devices import DeviceProfile
    from ..preprocess import Preprocess



@dataclass(frozen=True)
class Tolerance:
    """How closely an artifact must reproduce the PyTorch model to be written at all."""

    fp32_max_abs: float = 1e-3  # logits, absolute, for logits up to fp32_scale
    fp16_max_rel: float = 2e-2  # largest logit error / largest |logit|
    int8_top1: float = 0.90  # top-1 agreement with PyTorch on the golden samples, on a device
    fp32_scale: float = 100.0  # above it, fp32's allowance grows with the largest |logit| (float32 is relative)

    def fp32_allowed(self, largest_logit: float) -> float:
        from dataclasses import asdict

        from ..metrics import allowed_error

        return allowed_error("fp32", asdict(self), largest_logit)


@dataclass(frozen=True)
class ConvertJob:
    """One conversion: a loaded model to the artifacts of one target and precision."""

    module: object  # torch.nn.Module (the user's, or a plan's corrected one); typed loosely: no torch here
    arch: str
    labels: list[str]
    preprocess: Preprocess  # the artifact's input, as its record will say
    model_preprocess: Preprocess  # what the PyTorch module takes (NCHW, normalised)
    precision: str
    stem: str
    calibration: CalibrationSet | None = None
    opset: int = 18
    dynamic_batch: bool = False
    preset: str | None = None  # quantization preset, for targets that have presets
    log: Callable[[str], None] = print
    device: DeviceProfile | None = None  # the device profile named by --target, where one was
    judged_on_calibration: bool = False  # too few images to hold some back: INT8 is judged on what it calibrates on


@dataclass
class BuiltArtifact:
    """One artifact a target made in its scratch folder, and what its record should say of it."""

    path: Path  # the file a runtime opens
    files: tuple[Path, ...]  # every file of it, `path` first (.xml then .bin)
    format: str
    preprocess: Preprocess  # its input as built (an int8 TFLite input has its own scale)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    quantization: dict | None = None
    checks: list[dict] = field(default_factory=list)


@dataclass
class Built:
    artifacts: list[BuiltArtifact]  # the primary artifact first (mobile: the .pte, then the .ptl)
    companions: dict[str, bytes] = field(default_factory=dict)  # other files of the set, by name (TensorRT cache)
    # Where the primary artifact's runtime here is an emulator too slow for every image of every attempt: the
    # same quantized graph on a fast runtime, which the search judges attempts on (qnn: the QDQ on the CPU)
    stand_in: BuiltArtifact | None = None


class Target(Protocol):
    name: ClassVar[str]
    summary: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]  # from its registry row (Accepts)
    presets: ClassVar[tuple[str, ...]]  # quantization presets it accepts, () for none
    layout: ClassVar[str]  # NCHW or NHWC input
    tolerance: ClassVar[Tolerance]
    # Where its INT8 graph quantizes activations besides every layer's input (see quantization.simulate),
    # and what a layer kept out of INT8 becomes.
    placement: ClassVar[frozenset[str]]
    higher_precision: ClassVar[str]
    emulated: ClassVar[bool]  # its runtime on a PC is an emulator (seconds per image), checked on fewer images

    def input_spec(self, model_spec: Preprocess) -> Preprocess:
        """The artifact's input, derived from the PyTorch model's (same resize and crop)."""

    def activation_grid(self, job: ConvertJob) -> str:
        """How its INT8 activations lay 256 levels over a range: a name in quantization.simulate.GRIDS."""

    def build(self, job: ConvertJob, plan, scratch: Path) -> Built:
        """Export job.module (for INT8: plan.module, quantized by `plan`) into `scratch`."""

    def embed_record(self, artifact: BuiltArtifact, record: ArtifactRecord) -> None:
        """Write the record inside the artifact's file, where its format has room (in place)."""


class TargetBase:
    """What every target shares: what it accepts, from its registry row, and the common tolerance."""

    name: ClassVar[str]
    accepts: ClassVar[Accepts]
    precisions: ClassVar[tuple[str, ...]]
    presets: ClassVar[tuple[str, ...]]
    tolerance: ClassVar[Tolerance] = Tolerance()
    emulated: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.accepts = REGISTRY[cls.name].accepts
        cls.precisions, cls.presets = cls.accepts.precisions, cls.accepts.presets
