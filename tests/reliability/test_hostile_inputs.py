"""Lying files and hostile inputs: records, golden files, labels files, data folders, the CLI.

Each case is what a user or an attacker could hand edgeres; each must end in an edgeres
error that names what is wrong and what to do (one red line at the CLI), never a
runtime's traceback, a silent wrong answer or a file read outside the artifact's folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeres.artifact import METADATA_KEY, PTE_RECORD_MARKER, PTE_RECORD_METHOD, sidecar_path
from edgeres.errors import ArtifactError, EdgeresError, LabelsError
from edgeres.golden import check_golden, golden_path
from edgeres.labels import read_labels
from edgeres.runtime.classifier import Classifier
from tests.conftest import assert_one_red_line, run_cli


def _edit_sidecar(path: Path, change) -> None:
    record = json.loads(sidecar_path(path).read_text())
    change(record)
    sidecar_path(path).write_text(json.dumps(record))


@pytest.fixture
def pte(converted, copy_artifact) -> Path:
    """A .pte whose record lives only in its sidecar (as before records went inside), copied to be edited:
    its embedded record is put back to the unfilled placeholder, so the sidecar is what gets read."""
    from executorch.runtime import Runtime

    path = copy_artifact(converted("mobile", "fp32").path)
    embedded = Runtime.get().load_program(str(path)).load_method(PTE_RECORD_METHOD).execute([])[0].encode()
    data = path.read_bytes()
    assert data.count(embedded) == 1
    path.write_bytes(data.replace(embedded, PTE_RECORD_MARKER.encode().ljust(len(embedded))))
    assert Classifier(path).record.to_dict() == json.loads(sidecar_path(path).read_text())
    return path


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(labels=r["labels"][:3]), "3 labels for 10 classes"),
    (lambda r: r.update(labels=["a", "b", "c"], num_classes=3), "gives 10 outputs but its record has 3 labels"),
    (lambda r: r.update(labels=[str(i) for i in range(2_000_000)], num_classes=2_000_000), "1 to 100000"),
    (lambda r: r.update(labels=["same"] * 10), r"repeats labels \['same'\]"),
    (lambda r: r.update(labels="0123456789"), "field 'labels' is str, not list"),
    (lambda r: r.update(num_classes=True), "field 'num_classes' is bool"),
    (lambda r: r.update(preprocess=[1, 2]), "field 'preprocess' is list"),
    (lambda r: r["preprocess"].update(crop="big"), "resize and crop must be whole numbers"),
    (lambda r: r["preprocess"].update(crop=48, resize=55), "which the model refuses"),
    (lambda r: r.update(inputs=["x"]), "not a tensor description"),
    (lambda r: r.pop("preprocess"), "lacks preprocess"),
], ids=["few-labels", "labels-vs-outputs", "two-million-labels", "duplicate-labels", "labels-str", "bool-count",
        "preprocess-list", "crop-str", "crop-vs-input", "inputs-str", "missing-field"])
def test_a_lying_record_is_refused_when_the_artifact_opens(pte: Path, change, message: str) -> None:
    _edit_sidecar(pte, change)
    with pytest.raises(ArtifactError, match=message):
        Classifier(pte)


@pytest.mark.slow
@pytest.mark.parametrize("content, message", [("[]", "JSON list, not an edgeres record"), ("{", "not valid JSON"),
                                              (b"\xff\xfe", "not valid JSON")])
def test_a_record_that_is_not_a_record(pte: Path, content, message: str) -> None:
    target = sidecar_path(pte)
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ArtifactError, match=message):
        Classifier(pte)


@pytest.mark.slow
def test_a_sidecar_that_disagrees_with_the_embedded_record(converted, copy_artifact) -> None:
    onnx_path = copy_artifact(converted("onnx", "fp32").path)
    _edit_sidecar(onnx_path, lambda r: r["preprocess"].update(mean=[0.0, 0.0, 0.0]))  # would silently mislead
    with pytest.raises(ArtifactError, match="disagree on preprocess"):
        Classifier(onnx_path)


@pytest.mark.slow
def test_an_embedded_record_with_a_wrong_crop_reaches_no_runtime_traceback(converted, tmp_path: Path) -> None:
    model = onnx.load(str(converted("onnx", "fp32").path))
    entry = next(p for p in model.metadata_props if p.key == METADATA_KEY)
    record = json.loads(entry.value)
    record["preprocess"].update(crop=40, resize=46)
    entry.value = json.dumps(record)
    onnx.save(model, str(tmp_path / "lying.onnx"))
    with pytest.raises(ArtifactError, match=r"shape \(1, 3, 40, 40\).*refuses"):
        Classifier(tmp_path / "lying.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../outside.golden.npz", "/etc/passwd", "sub/x.golden.npz", ".."])
def test_verify_reads_golden_samples_only_beside_the_artifact(pte: Path, name: str) -> None:
    _edit_sidecar(pte, lambda r: r["golden"].update(file=name))
    with pytest.raises(ArtifactError, match="must be a plain file name beside the artifact"):
        check_golden(Classifier(pte))


@pytest.mark.slow
def test_the_golden_hash_covers_the_artifacts_own_logits(converted, copy_artifact) -> None:
    source = converted("mobile", "fp32").path
    pte = copy_artifact(source)
    with np.load(golden_path(source)) as data:
        arrays = dict(data)
    arrays["expected"] = arrays["expected"] + 1.0  # a lie that would loosen the INT8 device check
    np.savez(golden_path(pte), **arrays)
    with pytest.raises(ArtifactError, match="does not belong to this artifact"):
        check_golden(Classifier(pte))


def test_labels_files_are_utf8_and_distinct(tmp_path: Path) -> None:
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\nth\xe9\n".encode("latin-1"))
    with pytest.raises(LabelsError, match="not UTF-8 .*save it as UTF-8"):
        read_labels(latin)
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("cat\ndog\ncat\n")
    with pytest.raises(LabelsError, match="repeats 'cat'"):
        read_labels(repeated)
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    assert read_labels(bom) == ["cat", "dog"]


@pytest.mark.slow
def test_eval_on_folders_that_match_no_label_exits_1(monkeypatch, capsys, converted, digits, tmp_path: Path) -> None:
    for label, name in (("zero", "nul"), ("one", "een")):  # Dutch folder names for English labels
        shutil.copytree(digits.test_dir / label, tmp_path / "data" / name)
    code, _, err = run_cli(monkeypatch, capsys, "eval", converted("onnx", "fp32").path, "--data", tmp_path / "data")
    assert_one_red_line(code, err, "class folders 'een', 'nul' are neither among the model's labels ('zero', 'one'")


@pytest.mark.slow
def test_predict_on_a_folder_classifies_the_images_inside(monkeypatch, capsys, converted, digits) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "predict", converted("onnx", "fp32").path, digits.test_dir / "three",
                             "--json", "--topk", "1")
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == len(list((digits.test_dir / "three").iterdir())) > 10
    assert np.mean([row[0]["label"] == "three" for row in results.values()]) > 0.8


@pytest.mark.parametrize("error", [RuntimeError("boom"), MemoryError(), KeyError("x"), json.JSONDecodeError("e", "", 0)])
def test_every_failure_is_one_red_line(monkeypatch, capsys, error: BaseException) -> None:
    import edgeres.runtime.classifier as classifier_module

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(classifier_module.Classifier, "__init__", broken)
    code, _, err = run_cli(monkeypatch, capsys, "predict", "model.onnx", "a.jpg")
    assert_one_red_line(code, err, "out of memory" if isinstance(error, MemoryError) else type(error).__name__)


def test_edgeres_errors_show_a_traceback_only_with_verbose(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", tmp_path / "missing.pt", "--target", "onnx")
    assert_one_red_line(code, err, "missing.pt")
    with pytest.raises(EdgeresError):
        run_cli(monkeypatch, capsys, "convert", tmp_path / "missing.pt", "--target", "onnx", "--verbose")
