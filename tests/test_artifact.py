from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeres.artifact import (
    ArtifactRecord,
    TensorSpec,
    atomic_path,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from edgeres.errors import ArtifactError
from edgeres.preprocess import Preprocess


def _record() -> ArtifactRecord:
    return ArtifactRecord(
        arch="resnet18", num_classes=2, labels=["cat", "dog"], preprocess=Preprocess().to_dict(),
        precision="fp32", target="onnx", format="onnx",
        inputs=[TensorSpec("input", [1, 3, 224, 224], "float32", "NCHW")],
        outputs=[TensorSpec("logits", [1, 2], "float32")],
    )


def test_sidecar_round_trip(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    write_sidecar(artifact, _record())
    assert sidecar_path(artifact).name == "model.edgeres.json"
    assert read_sidecar(artifact) == _record()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    sidecar_path(artifact).write_text(json.dumps({**_record().to_dict(), "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema version 99"):
        read_sidecar(artifact)


def test_broken_sidecar(tmp_path: Path) -> None:
    artifact = tmp_path / "model.onnx"
    sidecar_path(artifact).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_sidecar(artifact)


def test_atomic_path_renames_on_success(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "model.bin"
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"done")
        assert not final.exists()
    assert final.read_bytes() == b"done"
    assert [p.name for p in final.parent.iterdir()] == ["model.bin"]


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "model.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("converter crashed")
    assert list(tmp_path.iterdir()) == []


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import os

    with atomic_path(tmp_path / "model.json") as tmp:
        tmp.write_text("{}")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "model.json").stat().st_mode & 0o777 == 0o666 & ~mask
