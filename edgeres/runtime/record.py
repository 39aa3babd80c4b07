"""An artifact's record, with its runtime where there is one, and without where there is not
(`edgeres info` on a machine that only converts, or without OpenCV)."""

from __future__ import annotations

from pathlib import Path

from ..artifact import ArtifactRecord, read_sidecar
from ..errors import BackendUnavailableError
from . import backend_class, resolve_artifact


def record_of(artifact: Path, log=lambda message: None) -> ArtifactRecord:
    """The artifact's record, checked against the model by its runtime; where the runtime (or OpenCV) is
    missing, read from the file itself or its sidecar, which needs neither, and `log` says so."""
    try:
        from .classifier import Classifier  # OpenCV: for its preprocessing

        return Classifier(artifact).record
    except (BackendUnavailableError, ModuleNotFoundError) as error:
        if isinstance(error, ModuleNotFoundError) and error.name != "cv2":
            raise
        reason = "OpenCV is not installed" if isinstance(error, ModuleNotFoundError) else str(error)
        path = resolve_artifact(artifact)
        if not path.is_file():
            raise
        for where, read in (("the record inside the file", backend_class(path).read_record),
                            ("the sidecar record", read_sidecar)):
            record = read(path)
            if record is not None:
                log(f"Read from {where}, without its runtime: not checked against the model ({reason})")
                return record
        raise
