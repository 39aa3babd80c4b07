"""`edgeres triton export`: the repository's files, read back by Triton's own config schema (tritonclient's
model_config protobuf), and what it refuses. Served by the real server in test_server.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from google.protobuf import text_format

from edgeres.artifact import sha256_of
from edgeres.errors import ArtifactError, ServingError
from edgeres.golden import golden_path
from edgeres.serving import repository as repo_module
from edgeres.serving.repository import MARKER, REPOSITORY, ExportOptions, export_repository
from edgeres.serving.server import ServerInstall, missing_backends
from tests.conftest import assert_one_red_line, run_cli

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

QUIET = dict(log=lambda message: None)


def configs(folder: Path) -> dict:
    """Each model's config.pbtxt parsed by Triton's own schema: a field it does not know fails here."""
    return {path.parent.name: text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
            for path in sorted((folder / REPOSITORY).glob("*/config.pbtxt"))}


def test_python_export_is_a_consistent_ensemble(converted, tmp_path):
    result = converted("onnx", "int8")
    exported = export_repository(result.path, tmp_path / "served", ExportOptions(backend="python"), **QUIET)
    models = configs(exported.folder)
    name = exported.name
    assert set(models) == {name, f"{name}_frame", f"{name}_preprocess_image", f"{name}_preprocess_frame",
                           f"{name}_model"}
    for ensemble in (models[name], models[f"{name}_frame"]):
        assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
        first, second = ensemble.ensemble_scheduling.step
        composed = models[first.model_name], models[second.model_name]
        # every name a step maps is a tensor of the model it feeds, and the steps meet on one tensor
        assert set(first.input_map) == {t.name for t in composed[0].input}
        assert set(first.output_map) == {t.name for t in composed[0].output}
        assert set(second.input_map) == {t.name for t in composed[1].input}
        assert list(first.output_map.values()) == list(second.input_map.values())
        assert list(second.output_map.values()) == [ensemble.output[0].name] == ["LOGITS"]
        assert composed[0].output[0].dims == composed[1].input[0].dims == [3, 32, 32]
    model = models[f"{name}_model"]
    assert model.backend == "python" and model.parameters["edgeres_role"].string_value == "classify"
    version = exported.repository / f"{name}_model" / "1"
    assert sha256_of(version / result.path.name) == sha256_of(result.path)
    assert (version / "model.py").read_text() == repo_module.MODEL_PY.read_text()
    labels = (exported.repository / name / "labels.txt").read_text().splitlines()
    assert labels == result.record.labels
    assert (exported.repository / name / "1" / "golden.npz").read_bytes() == golden_path(result.path).read_bytes()
    marker = json.loads((exported.folder / MARKER).read_text())
    assert marker["artifact_sha256"] == sha256_of(result.path) and marker["backend"] == "python"


def test_auto_puts_onnx_in_tritons_onnxruntime_backend_without_batching_a_static_model(converted, tmp_path):
    result = converted("onnx", "int8")
    exported = export_repository(result.path, tmp_path / "served", **QUIET)
    assert exported.backend == "onnxruntime" and exported.max_batch == 0
    models = configs(exported.folder)
    model = models[f"{exported.name}_model"]
    assert model.platform == "onnxruntime_onnx" and model.max_batch_size == 0
    assert [t.name for t in model.input] == [result.record.inputs[0].name]
    assert list(model.input[0].dims) == [1, 3, 32, 32]  # the batch of 1 the static model has
    assert list(models[exported.name].input[0].dims) == [1, -1]
    served = exported.repository / f"{exported.name}_model" / "1" / "model.onnx"
    assert served.read_bytes() == result.path.read_bytes()
    # the wheel's tritonserver has only the Python backend: it says so before starting anything
    wheel = ServerInstall(Path("/none"), Path("/none"), (), "test", ("python",))
    assert missing_backends(exported.repository, wheel) == {f"{exported.name}_model": "onnxruntime"}


def test_openvino_ir_goes_to_the_openvino_backend(converted, tmp_path):
    result = converted("x86", "int8")
    exported = export_repository(result.path, tmp_path / "served", **QUIET)
    assert exported.backend == "openvino"
    version = exported.repository / f"{exported.name}_model" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.bin", "model.xml"]
    assert (version / "model.bin").read_bytes() == result.path.with_suffix(".bin").read_bytes()
    assert configs(exported.folder)[f"{exported.name}_model"].backend == "openvino"


def test_gpu_export_asks_for_tensorrt_and_a_python_artifact_refuses_gpu(converted, tmp_path):
    result = converted("onnx", "int8")
    exported = export_repository(result.path, tmp_path / "gpu", ExportOptions(device="gpu"), **QUIET)
    model = configs(exported.folder)[f"{exported.name}_model"]
    assert model.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert model.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    with pytest.raises(ServingError, match="GPU instance gains nothing"):
        export_repository(result.path, tmp_path / "no", ExportOptions(backend="python", device="gpu"), **QUIET)
    with pytest.raises(ServingError, match="cannot run in Triton's openvino backend"):
        export_repository(result.path, tmp_path / "no", ExportOptions(backend="openvino"), **QUIET)


def test_kserve_manifests_are_inference_services(converted, tmp_path):
    exported = export_repository(converted("onnx", "int8").path, tmp_path / "served", **QUIET)
    for device in ("cpu", "gpu"):
        manifest = yaml.safe_load((exported.folder / "kserve" / f"inferenceservice-{device}.yaml").read_text())
        assert manifest["kind"] == "InferenceService" and manifest["apiVersion"] == "serving.kserve.io/v1beta1"
        assert manifest["metadata"]["name"] == f"{exported.name.replace('_', '-')}-{device}"
        model = manifest["spec"]["predictor"]["model"]
        assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
        assert ("nvidia.com/gpu" in model["resources"]["limits"]) == (device == "gpu")
    assert "py3-none-any.whl[onnx]" in (exported.folder / "kserve" / "Dockerfile").read_text()


def test_refuses_a_folder_of_someone_elses_files_and_bad_options(converted, tmp_path):
    artifact = converted("onnx", "int8").path
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(ServingError, match="not an edgeres Triton export"):
        export_repository(artifact, theirs, **QUIET)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    for options, message in ((ExportOptions(name="../x"), "not a model name"), (ExportOptions(max_batch=-1), "0 to"),
                             (ExportOptions(instances=0), "1 to"), (ExportOptions(backend="tflite"), "one of"),
                             (ExportOptions(device="tpu"), "cpu or gpu")):
        with pytest.raises(ServingError, match=message):
            export_repository(artifact, tmp_path / "new", options, **QUIET)
    assert not (tmp_path / "new").exists()


def test_a_set_whose_golden_file_was_swapped_is_not_exported(converted, tmp_path):
    result = converted("onnx", "int8")
    folder = tmp_path / "set"
    shutil.copytree(result.path.parent, folder)
    golden = golden_path(folder / result.path.name)
    with np.load(golden) as data:
        arrays = dict(data)
    arrays["expected"] = arrays["expected"][::-1].copy()
    np.savez_compressed(golden, **arrays)
    with pytest.raises(ArtifactError, match="does not belong to this artifact"):
        export_repository(folder / result.path.name, tmp_path / "served", **QUIET)
    assert not (tmp_path / "served").exists()


def test_export_again_replaces_the_old_one_and_a_failed_export_leaves_it(converted, tmp_path, monkeypatch):
    artifact = converted("onnx", "int8").path
    out = tmp_path / "served"
    export_repository(artifact, out, ExportOptions(name="first"), **QUIET)
    export_repository(artifact, out, ExportOptions(name="second", backend="python"), **QUIET)
    assert sorted(p.name for p in (out / REPOSITORY).iterdir())[0] == "second"
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))

    def broken(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(repo_module, "_artifact_model", broken)
    with pytest.raises(OSError):
        export_repository(artifact, out, ExportOptions(name="third"), **QUIET)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["served"]  # no scratch folder left beside it


def test_cli_export_and_a_check_with_nothing_served(converted, tmp_path, monkeypatch, capsys):
    artifact = converted("onnx", "int8").path
    code, out, err = run_cli(monkeypatch, capsys, "triton", "export", artifact, "--out", tmp_path / "served",
                             "--backend", "python")
    assert code == 0, err
    assert "edgeres triton serve" in out
    from edgeres.serving.server import free_port

    code, out, err = run_cli(monkeypatch, capsys, "triton", "check", tmp_path / "served", "--url",
                             f"127.0.0.1:{free_port()}")
    assert_one_red_line(code, err, "is the repository served there")
    code, out, err = run_cli(monkeypatch, capsys, "triton", "export", artifact, "--out", tmp_path / "x",
                             "--backend", "rknn")
    assert_one_red_line(code, err, "--backend must be one of")
