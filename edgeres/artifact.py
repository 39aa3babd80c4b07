"""The edgeres record that travels with every artifact, and atomic file writing.

The record lives in a sidecar `<stem>.edgeres.json` beside the artifact and, where
the format has metadata, inside the artifact too. Whoever holds the artifact holds
its preprocessing, labels and provenance, so they cannot be mismatched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from .version import __version__
from .errors import ArtifactError
from .labels import repeated_labels

SCHEMA_VERSION = 1
SIDECAR_SUFFIX = ".edgeres.json"
METADATA_KEY = "edgeres"
# ExecuTorch: a constant method of the program returns the record, so the .pte alone carries it; it is
# reserved at export as a placeholder string and filled in place (same length) once the record is known.
PTE_RECORD_METHOD = "edgeres_record"
PTE_RECORD_MARKER = "edgeres-record-placeholder"
LITE_RECORD_FILE = f"{METADATA_KEY}.json"  # TorchScript Lite: an extra file (extra/edgeres.json in the zip)


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
    companions: dict[str, str] | None = None  # sha256 of each other file the artifact loads (the IR's .bin)
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
        missing = sorted(f.name for f in fields(cls) if f.name not in values and f.name in _REQUIRED)
        if missing:
            raise ArtifactError(f"artifact record is incomplete: it lacks {', '.join(missing)}; convert again")
        _check_field_types(values)
        _check_labels(values["labels"], values["num_classes"])
        for key in ("inputs", "outputs"):
            values[key] = [_tensor_spec(spec, key) for spec in values[key]]
        return cls(**values)


def pte_record_bytes(labels: list[str]) -> int:
    """Room for the compact record: 128 KiB for everything but the labels (attempts, sensitivity, checks),
    plus twice the labels as JSON (they appear once)."""
    return (1 << 17) + 2 * len(json.dumps(labels))


def pte_record_placeholder(labels: list[str]) -> str:
    return PTE_RECORD_MARKER.ljust(pte_record_bytes(labels))


def compact_json(record: "ArtifactRecord") -> str:
    return json.dumps(record.to_dict(), separators=(",", ":"))  # ASCII: escapes keep bytes == characters


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.stem + SIDECAR_SUFFIX)


def write_sidecar(artifact: Path, record: ArtifactRecord) -> Path:
    path = sidecar_path(artifact)
    with atomic_path(path) as tmp:
        tmp.write_text(record.to_json() + "\n")
    return path


MAX_LABELS = 100_000  # far above any classifier's classes, far below a record that would exhaust memory
_REQUIRED = ("arch", "num_classes", "labels", "preprocess", "precision", "target", "format", "inputs", "outputs")
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "arch": (str,), "num_classes": (int,), "labels": (list,), "preprocess": (dict,), "precision": (str,),
    "target": (str,), "format": (str,), "inputs": (list,), "outputs": (list,), "source": (dict,),
    "calibration": (dict, type(None)), "quantization": (dict, type(None)), "checks": (list,),
    "verification": (dict, type(None)), "device_profile": (dict, type(None)), "golden": (dict, type(None)),
    "companions": (dict, type(None)),
    "edgeres_version": (str,), "schema_version": (int,),
}


def _check_field_types(values: dict[str, Any]) -> None:
    for key, value in values.items():
        expected = _FIELD_TYPES[key]
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in expected)
            raise ArtifactError(f"artifact record field {key!r} is {type(value).__name__}, not {names}; "
                                "the record was edited or is damaged: convert the model again")


def _check_labels(labels: list, num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_LABELS:
        raise ArtifactError(f"artifact record says {num_classes} classes; a classifier has 1 to {MAX_LABELS}")
    if len(labels) != num_classes or not all(isinstance(label, str) and label for label in labels):
        raise ArtifactError(f"artifact record has {len(labels)} labels for {num_classes} classes, or a label that "
                            "is not a non-empty string; give one label per class and convert again")
    duplicates = repeated_labels(labels)
    if duplicates:
        raise ArtifactError(f"artifact record repeats labels {duplicates[:5]}; every class needs its own label")


def _tensor_spec(spec: Any, key: str) -> TensorSpec:
    if not isinstance(spec, dict):
        raise ArtifactError(f"artifact record {key} holds {type(spec).__name__}, not a tensor description")
    try:
        tensor = TensorSpec(**spec)
    except TypeError as error:
        raise ArtifactError(f"artifact record {key} has a malformed tensor ({error}); convert again") from None
    if not isinstance(tensor.name, str) or not isinstance(tensor.shape, list) or not isinstance(tensor.dtype, str):
        raise ArtifactError(f"artifact record {key} tensor {spec} needs a name, a shape list and a dtype")
    return tensor


def read_sidecar(artifact: Path) -> ArtifactRecord | None:
    path = sidecar_path(artifact)
    return read_record_file(path) if path.exists() or path.is_symlink() else None


def read_record_file(path: Path) -> ArtifactRecord:
    from .files import RECORD_LIMIT, read_bytes

    data = read_bytes(path, RECORD_LIMIT, "record", ArtifactError)
    try:
        record = _loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ArtifactError(f"{path} is not valid JSON ({error}); convert the model again") from None
    return _from_json_object(record, str(path))


def _loads(text: str) -> Any:
    """JSON without NaN or Infinity: a record's numbers are all finite, and json would accept them."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not a number a record may hold")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):  # 1e999 parses to inf
            refuse(text)
        return value

    return json.loads(text, parse_constant=refuse, parse_float=finite)


def parse_embedded(text: str, where: Path) -> ArtifactRecord:
    try:
        record = _loads(text)
    except (json.JSONDecodeError, ValueError) as error:
        raise ArtifactError(f"the edgeres record inside {where} is not valid JSON ({error})") from None
    return _from_json_object(record, f"the record inside {where}")


def _from_json_object(record: Any, where: str) -> ArtifactRecord:
    if not isinstance(record, dict):
        raise ArtifactError(f"{where} is JSON {type(record).__name__}, not an edgeres record; convert again")
    return ArtifactRecord.from_dict(record)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    from .files import MODEL_LIMIT, open_checked

    digest = hashlib.sha256()
    with open_checked(path, MODEL_LIMIT, "file") as stream:
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


def check_companions(artifact: Path, record: ArtifactRecord) -> None:
    """Each file the record lists beside the artifact is the one it was converted with: an IR whose .bin
    was swapped for another model's would otherwise run, and answer wrongly, without a word."""
    for name, digest in (record.companions or {}).items():
        path = artifact.parent / name
        if not isinstance(digest, str) or Path(name).name != name or name in (".", ".."):
            raise ArtifactError(f"{artifact.name}'s record lists companion {name!r}; the record was edited: "
                                "convert again")
        if not path.exists() and not path.is_symlink():
            raise ArtifactError(f"{name} is missing beside {artifact.name}; copy the files of the artifact together")
        if sha256_of(path) != digest:
            raise ArtifactError(f"{name} is not the file {artifact.name} was converted with (its sha256 differs "
                                "from the record's): copy the one that came with it, or convert again")
