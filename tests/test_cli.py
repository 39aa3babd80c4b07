from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeres.artifact import sidecar_path
from edgeres.errors import install_hint
from edgeres.runtime.classifier import Classifier
from tests.conftest import assert_one_red_line, run_cli


@pytest.mark.slow
def test_convert_npu_then_classifier_matches_pytorch(monkeypatch, capsys, checkpoint: Path, digits,
                                                     calib_dir: Path, model, tmp_path: Path) -> None:
    """The issue's acceptance path: convert for the NPU, then predict held-out images with cv2.imread."""
    code, out, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--arch", "resnet18", "--target", "npu",
                             "--int8", "--calib", calib_dir, "--calib-size", "100", "--imgsz", "32",
                             "--labels", digits.labels_file, "--out", tmp_path)
    assert code == 0, err
    artifact = tmp_path / "resnet18_npu_int8" / "resnet18_npu_int8.onnx"
    assert "Wrote" in out and "QDQ around every op" in out
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "report.json", "report.md", "report.png", "resnet18_npu_int8"]
    assert sorted(p.name for p in artifact.parent.iterdir()) == [".edgeres-set",
        "report.json", "resnet18_npu_int8.edgeres.json", "resnet18_npu_int8.golden.npz", "resnet18_npu_int8.onnx"]
    classifier = Classifier(artifact)
    images = [path for path, _ in digits.test_images()][::3]
    ours = np.array([classifier.predict(cv2.imread(str(path)), topk=1)[0].index for path in images])
    inputs = np.stack([classifier.preprocess(cv2.imread(str(path))) for path in images])
    theirs = model.logits(inputs).argmax(1)
    assert (ours == theirs).mean() >= 0.98


@pytest.mark.slow
def test_predict_and_info(monkeypatch, capsys, converted, digits) -> None:
    artifact = converted("onnx", "fp32").path
    image = sorted(digits.test_dir.rglob("*.png"))[0]
    code, out, err = run_cli(monkeypatch, capsys, "predict", artifact, image, "--topk", "2", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert list(payload) == [str(image)] and len(payload[str(image)]) == 2
    assert payload[str(image)][0]["label"] == image.parent.name

    code, out, err = run_cli(monkeypatch, capsys, "info", artifact)
    assert code == 0, err
    assert "resnet18, 10 classes" in out and "fp32" in out

    code, out, err = run_cli(monkeypatch, capsys, "info", artifact, "--json")
    assert json.loads(out)["labels"][0] == "zero"


def _without(modules: set[str], argv: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where `modules` are not installed."""
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Absent(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in {modules!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        sys.meta_path.insert(0, Absent())
        sys.argv = {["edgeres", *map(str, argv)]!r}
        from edgeres.cli import main
        main()
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


# What each format's runtime is; `info` must read the record without it.
RUNTIME_MODULES = {".onnx": {"onnxruntime"}, ".xml": {"openvino"}, ".tflite": {"ai_edge_litert", "tflite_runtime"},
                   ".pte": {"executorch"}, ".ptl": {"torch"}}


@pytest.mark.slow
@pytest.mark.parametrize("target, precision", [("onnx", "fp32"), ("x86", "int8"), ("rpi", "int8"), ("mobile", "fp32")])
def test_info_reads_a_lone_artifact_without_its_runtime(converted, tmp_path: Path, target: str, precision: str) -> None:
    """Copied alone (no sidecar) to a machine without its runtime: the record comes from the file."""
    result = converted(target, precision)
    for source in (result.path, *result.companions):
        artifact = tmp_path / source.name
        for part in [source, *([source.with_suffix(".bin")] if source.suffix == ".xml" else [])]:
            shutil.copy(part, tmp_path / part.name)
        shown = _without(RUNTIME_MODULES[source.suffix], ["info", artifact, "--json"])
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == json.loads(sidecar_path(source).read_text())  # each file its own
        assert "Read from the record inside the file, without its runtime" in shown.stderr


@pytest.mark.slow
def test_info_without_the_runtime_falls_back_to_the_sidecar(converted, tmp_path: Path) -> None:
    """A file with no record of its own (a TensorRT engine; here an ONNX stripped of it) and its sidecar."""
    import onnx

    result = converted("onnx", "fp32")
    artifact = tmp_path / result.path.name
    model = onnx.load(str(result.path))
    del model.metadata_props[:]
    onnx.save(model, str(artifact))
    shutil.copy(sidecar_path(result.path), sidecar_path(artifact))
    shown = _without({"onnxruntime"}, ["info", artifact])
    assert shown.returncode == 0, shown.stderr
    assert "resnet18, 10 classes" in shown.stdout and "Read from the sidecar record" in shown.stderr
    sidecar_path(artifact).unlink()
    missing = _without({"onnxruntime"}, ["info", artifact])
    assert_one_red_line(missing.returncode, missing.stderr, "py3-none-any.whl[onnx]'")


def test_help_teaches(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "convert", "--help")
    assert code == 0
    for words in ("--int8", "--calib", "--target", "onnx, npu, qnn, rknn, imx500, x86, rpi", "--preset", "--trust-checkpoint", "Examples"):
        assert words in out


def test_piped_tables_are_plain_and_whole(capsys) -> None:
    """Piped or redirected, a table is tab-separated lines: nothing cut to the width, no box drawing."""
    from rich.table import Table

    from edgeres import console

    table = Table(title="Wrote out/model.onnx")
    for column in ("artifact", "max |logit diff|"):
        table.add_column(column)
    table.add_row("resnet50_imagenet_finetuned_npu_int8_a16w8.onnx", "1.23e-05")
    console.show(table)
    out = capsys.readouterr().out
    assert out.splitlines() == ["Wrote out/model.onnx", "artifact\tmax |logit diff|",
                                "resnet50_imagenet_finetuned_npu_int8_a16w8.onnx\t1.23e-05"]


def test_piped_lines_are_whole(capsys) -> None:
    """Log lines and messages to a pipe are not wrapped at the console's width (a path stays whole)."""
    from edgeres import console

    message = "Report: " + "/very/long/folder" * 30 + "/report.png"
    console.log(message)
    console.console.print(message)
    captured = capsys.readouterr()
    assert captured.err.strip() == message and captured.out.strip() == message


def test_cells_are_data_not_markup(capsys, monkeypatch) -> None:
    """A label "one [b]" or "zero [/x]" prints as it is, piped or on a terminal."""
    from rich.console import Console
    from rich.table import Table

    from edgeres import console

    def table() -> Table:
        made = Table()
        made.add_column("label")
        made.add_row("one [b]")
        made.add_row("zero [/x]")
        return made

    console.show(table())
    assert capsys.readouterr().out.splitlines() == ["label", "one [b]", "zero [/x]"]
    terminal = Console(force_terminal=True, width=60, record=True)
    monkeypatch.setattr(console, "console", terminal)
    console.show(table())
    shown = terminal.export_text()
    assert "one [b]" in shown and "zero [/x]" in shown


def test_an_installed_package_that_fails_to_import_is_not_called_missing(monkeypatch, capsys) -> None:
    """Only a package that is not there gets the install hint; a broken one is reported as it is."""
    from edgeres import cli

    def broken(*_, **__):
        raise ImportError("cannot import name 'x' from 'torch'", name="torch")

    monkeypatch.setattr(cli, "app", broken)
    code, _, err = run_cli(monkeypatch, capsys, "convert")
    assert_one_red_line(code, err, "unexpected ImportError: cannot import name 'x' from 'torch'")
    assert "pip install" not in err


def test_shell_completion_is_offered(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0 and "--install-completion" in out and "--show-completion" in out


def test_short_help_is_help(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(monkeypatch, capsys, "convert", "-h")
    assert code == 0 and "--calib" in out and "Usage" in out


def test_an_install_hint_keeps_its_brackets(monkeypatch, capsys, tmp_path: Path) -> None:
    """rich would read [x86] as markup and print pip install 'edgeres'."""
    from edgeres.errors import BackendUnavailableError
    from edgeres.runtime import classifier

    def unavailable(*_, **__):
        raise BackendUnavailableError("OpenVINO IR artifacts need OpenVINO: pip install 'edgeres[x86]' [/bold]")

    monkeypatch.setattr(classifier.Classifier, "__init__", unavailable)
    artifact = tmp_path / "model[1].xml"
    artifact.write_text("<net/>")
    code, _, err = run_cli(monkeypatch, capsys, "predict", artifact, tmp_path / "frame.png")
    assert_one_red_line(code, err, "pip install 'edgeres[x86]' [/bold]")


def test_converting_on_a_device_install_names_the_extra(tmp_path: Path) -> None:
    """Where only a runtime is installed, convert says which extra to add: one line, no traceback."""
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not a checkpoint")
    result = _without({"torch", "torchvision"}, ["convert", checkpoint, "--arch", "resnet18"])
    assert_one_red_line(result.returncode, result.stderr, "torch is not installed")
    assert "[convert] extra: " + install_hint("convert") in result.stderr


def test_convert_imagenet_weights_from_disk(monkeypatch, capsys, tmp_path: Path) -> None:
    """--weights imagenet without a checkpoint, as --help says: the real loading path, with a
    file standing in for the download where torch.hub keeps it."""
    import torch
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), folder / "resnet18-f37072fd.pth")
    code, _, err = run_cli(monkeypatch, capsys, "convert", "--weights", "imagenet", "--imgsz", "32",
                           "--out", tmp_path / "out")
    assert code == 0, err
    record = json.loads(sidecar_path(tmp_path / "out" / "resnet18_onnx_fp32" / "resnet18_onnx_fp32.onnx").read_text())
    assert record["labels"][0] == "tench" and record["source"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"


def test_convert_imagenet_weights_offline_says_where_to_put_them(monkeypatch, capsys, tmp_path: Path) -> None:
    import torch.hub
    import urllib.error

    def no_network(url: str, dst: str, progress: bool) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    code, _, err = run_cli(monkeypatch, capsys, "convert", "--weights", "imagenet", "--out", tmp_path / "out")
    assert_one_red_line(code, err, "Copy resnet18-f37072fd.pth")


def test_convert_without_a_model(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", "--out", tmp_path)
    assert_one_red_line(code, err, "give a checkpoint (edgeres convert model.pth ...) or --weights imagenet")


def test_missing_checkpoint(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", tmp_path / "model.pth")
    assert_one_red_line(code, err, "does not exist")


def test_unknown_target(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "tpu", "--out", tmp_path)
    assert_one_red_line(code, err, "unknown target 'tpu'; choose a target (onnx, npu, qnn, rknn, imx500, x86, rpi, jetson, mobile) or a device profile (jetson-agx-orin, jetson-nano, jetson-orin-nano, jetson-orin-nx, rk3566, rk3568, rk3588, rpi-ai-camera, rpi4, rpi5, snapdragon-8-elite, snapdragon-8-gen-1, snapdragon-8-gen-2, snapdragon-8-gen-3, x86-amx, x86-avx2, x86-avx512-vnni)")


def test_wrong_arch(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--arch", "resnet50", "--out", tmp_path)
    assert_one_red_line(code, err, "pass --arch resnet18")


def test_empty_calibration_folder(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "calib"
    empty.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--int8", "--calib", empty,
                           "--imgsz", "32", "--out", tmp_path / "out")
    assert_one_red_line(code, err, "has no images")
    assert not (tmp_path / "out").exists()


def test_int8_and_fp16_together(monkeypatch, capsys, checkpoint: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--int8", "--fp16")
    assert_one_red_line(code, err, "choose one of --int8 and --fp16")


@pytest.mark.slow
def test_predict_corrupt_and_missing_image(monkeypatch, capsys, converted, tmp_path: Path) -> None:
    artifact = converted("onnx", "fp32").path
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8 broken jpeg")
    code, _, err = run_cli(monkeypatch, capsys, "predict", artifact, corrupt)
    assert_one_red_line(code, err, "cannot be decoded")
    code, _, err = run_cli(monkeypatch, capsys, "predict", artifact, tmp_path / "nope.jpg")
    assert_one_red_line(code, err, "does not exist")


def test_info_on_unknown_file(monkeypatch, capsys, tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    code, _, err = run_cli(monkeypatch, capsys, "info", path)
    assert_one_red_line(code, err, "no runtime backend for '.bin' files")


def test_checkpoint_folder(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", tmp_path)
    assert_one_red_line(code, err, "is a folder; give the checkpoint file")


def test_calib_is_a_file(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--int8", "--calib", checkpoint,
                           "--imgsz", "32", "--out", tmp_path)
    assert_one_red_line(code, err, "is a file edgeres cannot calibrate from; give a folder")


def test_out_is_a_file(monkeypatch, capsys, checkpoint: Path) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--out", checkpoint)
    assert_one_red_line(code, err, "is a file; give a folder for the artifacts")


@pytest.mark.slow
def test_unwritable_output_is_one_red_line(monkeypatch, capsys, checkpoint: Path, tmp_path: Path) -> None:
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):  # as root, chmod cannot make a folder unwritable
        if tmp_path / "out" in (self, *self.parents):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--imgsz", "32", "--out", tmp_path / "out")
    assert_one_red_line(code, err, "Permission denied")
    assert str(tmp_path / "out") in err
    assert not (tmp_path / "out").exists()


def test_convert_calibrates_from_a_video(monkeypatch, capsys, checkpoint: Path, clip, tmp_path: Path) -> None:
    path, _ = clip
    code, out, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--int8",
                             "--calib", path, "--calib-size", "20", "--calib-every", "3", "--imgsz", "32",
                             "--out", tmp_path)
    assert code == 0, err
    record = json.loads((tmp_path / "resnet18_onnx_int8" / "resnet18_onnx_int8.edgeres.json").read_text())
    assert record["calibration"]["source"] == "video" and record["calibration"]["used"] == 20
    assert record["calibration"]["every"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "eval", "video"])
def test_every_artifact_command_takes_a_precision_mode(monkeypatch, capsys, converted, digits, clip, tmp_path: Path,
                                                       command: str) -> None:
    """bf16 runs where the CPU has it; elsewhere one red line names the modes there are. (verify and
    benchmark: tests/test_golden.py, tests/test_benchmark.py)"""
    from edgeres.runtime.openvino import host_precisions

    artifact = converted("x86", "fp32").path
    image = next(iter(sorted((digits.test_dir / "seven").iterdir())))
    arguments = {"predict": [artifact, image], "eval": [artifact, "--data", digits.test_dir],
                 "video": [artifact, "--source", clip[0], "--headless", "--out", tmp_path, "--max-frames", "5"]}
    code, out, err = run_cli(monkeypatch, capsys, command, *arguments[command], "--precision", "bf16")
    if "bf16" in host_precisions():
        assert code == 0, err
    else:
        assert_one_red_line(code, err, f"{artifact.name} cannot run in bf16 on")
    code, _, err = run_cli(monkeypatch, capsys, command, *arguments[command], "--precision", "fp64")
    assert_one_red_line(code, err, "precision must be one of fp32, bf16, fp16, got 'fp64'")
