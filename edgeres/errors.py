"""edgeres' own exceptions.

Every message says what was expected, what was found and what to do, because the
CLI shows the message alone, as one line, without a traceback.
"""

from __future__ import annotations


class EdgeresError(Exception):
    """Base of every error edgeres raises on purpose."""


class CheckpointError(EdgeresError):
    """A checkpoint is missing, corrupt, unsafe to load, or not of the expected architecture."""


class ArchitectureError(CheckpointError):
    """The architecture asked for does not exist or does not match the checkpoint."""


class WeightsNotFoundError(CheckpointError):
    """Pretrained weights are not on disk and cannot be downloaded."""


class LabelsError(EdgeresError):
    """A labels file is missing, empty or does not match the model's classes."""


class PreprocessError(EdgeresError):
    """A preprocessing spec is invalid."""


class FrameError(EdgeresError):
    """An input frame cannot be classified as given (None, empty, wrong dtype or channels)."""


class CalibrationError(EdgeresError):
    """The calibration data is missing, empty or unreadable."""


class TargetError(EdgeresError):
    """An unknown target, or options that the target does not accept."""


class ConversionError(EdgeresError):
    """A converter failed, or its output broke a rule the target requires."""


class PlanRefusedError(ConversionError):
    """A target's own compiler failed on one quantization plan (it crashed on the layers a plan keeps): the
    accuracy search records it and goes on with the plans it has; a conversion with no other plan fails."""


class VerificationError(ConversionError):
    """An exported artifact does not reproduce the PyTorch model within the target's tolerance."""


class ArtifactError(EdgeresError):
    """An artifact is missing, of an unknown format, or lacks its edgeres record."""


class BackendUnavailableError(EdgeresError):
    """The runtime package an artifact needs is not installed."""


class DeviceError(EdgeresError):
    """The inference device asked for does not exist on this machine."""


class ModeUnavailableError(DeviceError):
    """A precision mode this device does not offer; `reason` says why in a few words (for records)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class EvaluationError(EdgeresError):
    """Labelled data that is missing, empty, or does not match the model's classes."""


def install_hint(extra: str) -> str:
    """How to add an extra: edgeres is not on PyPI, so pip installing edgeres by name would fetch
    someone else's package or nothing; it is installed from its wheel or its repository."""
    from .version import __version__

    return (f"pip install 'edgeres-{__version__}-py3-none-any.whl[{extra}]' with the wheel (the README's "
            f"Install), or pip install -e '.[{extra}]' in the repository")


# The packages only conversion (or the demo's data) needs, and the extra that installs each.
EXTRA_OF_MODULE = {
    **dict.fromkeys(("torch", "torchvision", "onnx", "onnxscript", "nncf", "litert_torch", "ai_edge_quantizer",
                     "matplotlib", "executorch"), "convert"),
    "sklearn": "demo", "skimage": "demo", "cv2": "opencv", "tritonclient": "serve",
}


# OpenCV is not a dependency of the core: a Jetson has JetPack's own (with GStreamer), which a pip wheel in the same venv would shadow. Everywhere else an extra brings it.
NO_OPENCV = (
    f"edgeres needs OpenCV (cv2), which every runtime's extra brings, and none is installed: "
    f"{install_hint('opencv')}. On a Jetson use JetPack's own OpenCV instead: make the venv with "
    "--system-site-packages"
)


def import_failure(error: ImportError) -> str:
    """One line for an ImportError: the extra to install where a package is missing, else what broke."""
    package = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(package)
    if extra is None or not isinstance(error, ModuleNotFoundError) or installed(package):
        return (f"unexpected ImportError: {error}. Run again with --verbose for the traceback; installed packages "
                "that do not import together often mean a version mismatch (see pyproject.toml)")
    if package == "cv2":
        return NO_OPENCV
    return (f"{package} is not installed, and this command needs edgeres' [{extra}] extra: {install_hint(extra)}. "
            "A device that only runs artifacts needs just its runtime's extra")


def installed(package: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


class ServingError(EdgeresError):
    """A model repository cannot be written or served, or a served model answers otherwise than its artifact."""
