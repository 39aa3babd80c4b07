"""Runtime backends, one module each, chosen by the artifact's file suffix.

Adding a backend is one new module and one line here. Nothing is imported until an
artifact of that kind is opened, so a device needs only its own runtime package.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from ..errors import ArtifactError, DeviceError, EdgeresError
from ..artifact import sidecar_path
from ..files import MODEL_LIMIT, checked
from .base import PRECISION_MODES, Backend

BACKENDS: dict[str, str] = {
    ".onnx": "edgeres.runtime.onnxruntime:OnnxRuntimeBackend",
    ".xml": "edgeres.runtime.openvino:OpenVinoBackend",
    ".tflite": "edgeres.runtime.tflite:TfliteBackend",
    ".engine": "edgeres.runtime.tensorrt:TensorRtBackend",
    ".pte": "edgeres.runtime.executorch:ExecuTorchBackend",
    ".ptl": "edgeres.runtime.torchscript:LiteInterpreterBackend",
    ".rknn": "edgeres.runtime.rknn:RknnLiteBackend",
    ".zip": "edgeres.runtime.imx500:Imx500CameraBackend",  # NAME.imx500.zip, the IMX500 converter's package
}

# Files of a suffix above that only another runtime runs, told apart by their content: (test, backend).
SPECIALISED: dict[str, list[tuple[str, str]]] = {
    ".onnx": [("edgeres.runtime.qnn:is_context_model", "edgeres.runtime.qnn:QnnBackend")],  # QNN context models
    ".rknn": [("edgeres.runtime.rknn:simulated_here", "edgeres.runtime.rknn:RknnSimulatorBackend")],  # on a PC
    ".zip": [("edgeres.runtime.imx500:simulated_here", "edgeres.runtime.imx500:Imx500SimulatorBackend")],  # a PC
}


def backend_class(path: Path) -> type[Backend]:
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        raise ArtifactError(
            f"{path.name}: no runtime backend for '{suffix or 'no suffix'}' files; "
            f"edgeres runs {', '.join(BACKENDS)}"
        )
    for test, backend in SPECIALISED.get(suffix, []):
        if path.is_file() and _named(test)(path):
            return _named(backend)
    return _named(BACKENDS[suffix])


def _named(where: str):
    module_name, name = where.split(":")
    return getattr(import_module(module_name), name)


def open_backend(path: Path, threads: int | None = None, device: str | None = None,
                 precision: str | None = None) -> Backend:
    """The runtime backend for the artifact at `path`, compiled for `precision` (None: the artifact's own mode).

    Conversion checks artifacts through this function and Classifier runs them through it, so
    what was verified is what a device runs.
    """
    checked(path, MODEL_LIMIT, "artifact")
    cls = backend_class(path)
    check_precision(cls, path, precision)
    return cls(path, threads, device, precision)


def check_precision(cls: type[Backend], path: Path, precision: str | None) -> None:
    """A mode that `cls` can be asked for at all (whether this host has it, the backend says when it loads)."""
    if precision is not None and precision not in PRECISION_MODES:
        raise EdgeresError(f"precision must be one of {', '.join(PRECISION_MODES)}, got {precision!r}")
    if precision is not None and precision not in cls.execution_precisions:
        raise DeviceError(
            f"{path.name} runs on {cls.name} in the precision it was built in; there is no {precision} mode to "
            f"choose. Execution modes are OpenVINO's ({', '.join(PRECISION_MODES)}, where the CPU has them): "
            "leave out the precision, or convert for the precision you want"
        )


def resolve_artifact(path: Path) -> Path:
    """An artifact file, or a set folder made by `edgeres convert` (OUT/NAME/): its NAME.<format> file."""
    path = Path(path)
    if not path.is_dir():
        return path
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in BACKENDS and p.is_file())
    # the artifact of a set is the file with a record beside it (NAME.imx500.zip, not the NAME.mct.onnx it needs)
    recorded = [p for p in found if sidecar_path(p).is_file()]
    if len(recorded) == 1:
        return recorded[0]
    named = [p for p in found if p.stem == path.name]
    if len(named) == 1 or len(found) == 1:
        return (named or found)[0]
    if not found:
        raise ArtifactError(f"{path} is a folder with no artifact in it (edgeres runs {', '.join(BACKENDS)} files)")
    raise ArtifactError(f"{path} holds several artifacts ({', '.join(p.name for p in found)}); name the file")

