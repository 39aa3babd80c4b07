"""The edgeres record that travels with every artifact, and atomic file writing.

The record lives in a sidecar `<stem>.edgeres.json` beside the artifact and, where
the format has metadata, inside the artifact too. Whoever holds the artifact holds
its preprocessing, labels and provenance, so they cannot be mismatched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import ArtifactError

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".edgeres.json"
METADATA_KEY = "edgeres"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[Any]  # ints, or a string for a dynamic axis
    dtype: str
    layout: str | None = None


@dataclass(frozen=True)
class ArtifactRecord:
    """Everything a runtime needs to use an artifact correctly, and how it was made."""

    arch: str
    num_classes: int
    labels: list[str]
    preprocess: dict[str, Any]
    precision: str  # fp32 | fp16 | int8
    target: str
    format: str  # onnx | openvino | tflite | ...
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint name and sha256
    calibration: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)  # rules verified at conversion
    verification: dict[str, Any] | None = None  # agreement with the PyTorch model
    device_profile: dict[str, Any] | None = None  # e.g. rpi5: its CPU, threads, and why
    golden: dict[str, Any] | None = None  # golden samples beside the artifact, for `edgeres verify`
    edgeres_version: str = __version__
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "ArtifactRecord":
        version = record.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"artifact record has schema version {version}, this edgeres "
                f"({__version__}) reads version {SCHEMA_VERSION}; convert again or upgrade edgeres"
            )
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in record.items() if key in known}
        for key in ("inputs", "outputs"):
            values[key] = [TensorSpec(**spec) for spec in values.get(key, [])]
        try:
            return cls(**values)
        except TypeError as error:
            raise ArtifactError(f"artifact record is incomplete: {error}") from None


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.stem + SIDECAR_SUFFIX)


def write_sidecar(artifact: Path, record: ArtifactRecord) -> Path:
    path = sidecar_path(artifact)
    with atomic_path(path) as tmp:
        tmp.write_text(record.to_json() + "\n")
    return path


def read_sidecar(artifact: Path) -> ArtifactRecord | None:
    path = sidecar_path(artifact)
    if not path.exists():
        return None
    try:
        return ArtifactRecord.from_dict(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); convert the model again") from None


def parse_embedded(text: str, where: Path) -> ArtifactRecord:
    try:
        return ArtifactRecord.from_dict(json.loads(text))
    except json.JSONDecodeError as error:
        raise ArtifactError(f"the edgeres record inside {where} is not valid JSON ({error})") from None


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only on success.

    A conversion that fails or is interrupted leaves no half-written `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(handle)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; an artifact is an ordinary file
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
