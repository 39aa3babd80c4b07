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


def served_input_shape(version: Path) -> list:
    """The input shape of the file Triton's own backend would load, read by its format's own library."""
    if (version / "model.onnx").is_file():
        import onnx

        dims = onnx.load(version / "model.onnx").graph.input[0].type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    import openvino as ov

    shape = ov.Core().read_model(str(version / "model.xml")).inputs[0].get_partial_shape()
    return [d.get_length() if d.is_static else -1 for d in shape]


def config_input_shape(config) -> list:
    return ([-1] if config.max_batch_size else []) + list(config.input[0].dims)


@pytest.mark.parametrize("set_options", [("onnx", "int8", {}), ("onnx", "int8", {"dynamic_batch": True}),
                                         ("x86", "int8", {}), ("x86", "int8", {"dynamic_batch": True})],
                         ids=["onnx", "onnx-dynamic", "x86", "x86-dynamic"])
def test_native_configs_match_the_files_triton_loads(converted, tmp_path, set_options):
    """Triton's onnxruntime and openvino backends compare config dims with the model's exactly (the IR is
    saved reshaped to the crop, as edgeres' runtime reshapes it at load)."""
    target, precision, options = set_options
    result = converted(target, precision, **options)
    exported = export_repository(result.path, tmp_path / "served", **QUIET)
    assert exported.backend == ("openvino" if target == "x86" else "onnxruntime")
    assert exported.max_batch == (8 if options else 0)
    model = configs(exported.folder)[f"{exported.name}_model"]
    assert config_input_shape(model) == served_input_shape(exported.repository / f"{exported.name}_model" / "1")
    padding = model.parameters["ENABLE_BATCH_PADDING"].string_value if "ENABLE_BATCH_PADDING" in model.parameters \
        else None
    assert padding == ("YES" if target == "x86" and options else None)


def test_gpu_export_asks_for_tensorrt_and_a_python_artifact_refuses_gpu(converted, tmp_path):
    result = converted("onnx", "int8")
    exported = export_repository(result.path, tmp_path / "gpu", ExportOptions(device="gpu"), **QUIET)
    model = configs(exported.folder)[f"{exported.name}_model"]
    assert model.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    accelerator = model.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "INT8"
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


def test_out_refuses_a_link_and_leaves_a_users_look_alike_folder(converted, tmp_path):
    artifact = converted("onnx", "int8").path
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ServingError, match="symbolic link"):
        export_repository(artifact, tmp_path / "link", **QUIET)
    mine = tmp_path / ".served-old"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    export_repository(artifact, tmp_path / "served", **QUIET)
    export_repository(artifact, tmp_path / "served", **QUIET)
    assert (mine / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".served-old", "link", "real", "served"]


def test_a_failed_swap_puts_the_previous_export_back(converted, tmp_path, monkeypatch):
    artifact = converted("onnx", "int8").path
    out = tmp_path / "served"
    export_repository(artifact, out, ExportOptions(name="first"), **QUIET)
    rename = Path.rename

    def failing(self, target):
        if Path(target) == out and self.name.startswith(".served-") and "-old-" not in self.name:
            raise OSError(5, "Input/output error")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="Input/output"):
        export_repository(artifact, out, ExportOptions(name="second"), **QUIET)
    assert [p.name for p in (out / REPOSITORY).iterdir() if p.name == "first"] == ["first"]
    assert [p.name for p in tmp_path.iterdir()] == ["served"]


def test_names_config_pbtxt_cannot_hold_are_refused_and_a_renamed_set_exports(converted, tmp_path):
    from edgeres.artifact import sidecar_path
    from edgeres.serving.repository import _check_labels

    result = converted("onnx", "int8")
    for stem, works in (('x" } parameters { key: "y', False), ("renamed", True)):
        folder = tmp_path / ("ok" if works else "bad")
        folder.mkdir()
        for path in result.path.parent.iterdir():  # the golden file keeps the name the record gives it
            renamed = {result.path.name: f"{stem}.onnx", sidecar_path(result.path).name: f"{stem}.edgeres.json"}
            shutil.copyfile(path, folder / renamed.get(path.name, path.name))
        if works:
            assert export_repository(folder / f"{stem}.onnx", tmp_path / "served", ExportOptions(
                backend="python"), **QUIET).name == "renamed"
        else:
            with pytest.raises(ServingError, match="cannot be written into Triton's config.pbtxt"):
                export_repository(folder / f"{stem}.onnx", tmp_path / "no", ExportOptions(backend="python"), **QUIET)
    for label in ("cat\ndog", "cat\x0bdog", "bird\r"):
        with pytest.raises(ServingError, match="line break"):
            _check_labels(["zero", label])
    _check_labels(["zero", "tabby\tcat", "crème brûlée"])


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
    assert_one_red_line(code, err, "nothing answers http at")
    code, out, err = run_cli(monkeypatch, capsys, "triton", "export", artifact, "--out", tmp_path / "x",
                             "--backend", "rknn")
    assert_one_red_line(code, err, "--backend must be one of")
