"""`edgeres verify`: the golden samples catch what goes wrong on a device."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest

from edgeres.errors import ArtifactError
from edgeres.golden import check_golden, golden_path, judged_as
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier
from tests.conftest import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow


def copy_with_golden(artifact: Path, folder: Path) -> Path:
    """The artifact's whole set folder, copied (as a user copies it to a device)."""
    target = folder / artifact.parent.name
    shutil.copytree(artifact.parent, target)
    return target / artifact.name


@pytest.mark.parametrize("target, precision", [("onnx", "fp32"), ("onnx", "fp16"), ("npu", "int8"),
                                               ("x86", "int8"), ("rpi", "int8")])
def test_every_artifact_passes_where_it_was_made(converted, target: str, precision: str) -> None:
    result = converted(target, precision)
    assert golden_path(result.path) in result.files
    check = check_golden(Classifier(result.path))
    assert check.passed, check.failures
    assert check.samples == (16 if precision == "int8" else 8)  # 8 seeded random images without --calib
    assert check.top1_vs_expected == 1.0


def test_cli_verify(monkeypatch, capsys, converted) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "verify", converted("x86", "int8").path)
    assert code == 0, err
    assert "passed" in out and "vs FP32 reference" in out


def test_a_float_artifact_in_a_reduced_mode_answers_to_fp16s_rule() -> None:
    assert [judged_as("fp32", mode) for mode in ("fp32", "bf16", "fp16")] == ["fp32", "fp16", "fp16"]
    assert judged_as("fp16", "fp32") == "fp16" and judged_as("int8", "bf16") == "int8"


@pytest.mark.parametrize("target, precision", [("x86", "fp32"), ("x86", "int8")])
def test_cli_verify_in_a_faster_mode_runs_where_the_cpu_has_it(monkeypatch, capsys, converted, target: str,
                                                               precision: str) -> None:
    """On a bf16 CPU the mode runs and passes its rule; elsewhere one red line names the modes there are."""
    from edgeres.runtime.openvino import host_precisions

    code, out, err = run_cli(monkeypatch, capsys, "verify", converted(target, precision).path, "--precision", "bf16")
    if "bf16" in host_precisions():
        assert code == 0 and "in bf16" in out, err
    else:
        assert_one_red_line(code, err, "cannot run in bf16 on")
        assert "OpenVINO offers fp32" in err


def test_a_preprocessing_mismatch_fails(monkeypatch, capsys, converted) -> None:
    """As if the device's OpenCV resized differently: nearest-neighbour instead of antialiased bilinear."""
    def nearest(self, frame):
        side = self.resize
        h, w = frame.shape[:2]
        scale = side / min(h, w)
        resized = cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_NEAREST)
        top, left = (resized.shape[0] - self.crop) // 2, (resized.shape[1] - self.crop) // 2
        return resized[top : top + self.crop, left : left + self.crop]

    monkeypatch.setattr(Preprocess, "resize_and_crop", nearest)
    code, _, err = run_cli(monkeypatch, capsys, "verify", converted("onnx", "fp32").path)
    assert_one_red_line(code, err, "failed on this device: logits differ from the FP32 reference")


def test_a_runtime_that_computes_something_else_fails(monkeypatch, converted) -> None:
    from edgeres.runtime.onnxruntime import OnnxRuntimeBackend

    original = OnnxRuntimeBackend.run
    monkeypatch.setattr(OnnxRuntimeBackend, "run", lambda self, batch: original(self, batch) * 0.8)
    check = check_golden(Classifier(converted("npu", "int8").path))
    assert not check.passed and "the runtime computes something else" in check.failures[-1]


def test_missing_or_foreign_golden_file(converted, tmp_path: Path) -> None:
    artifact = copy_with_golden(converted("onnx", "fp32").path, tmp_path)
    golden_path(artifact).unlink()
    with pytest.raises(ArtifactError, match="missing beside the artifact"):
        check_golden(Classifier(artifact))
    shutil.copy(golden_path(converted("npu", "int8").path), golden_path(artifact))
    with pytest.raises(ArtifactError, match="does not belong to this artifact"):
        check_golden(Classifier(artifact))
    golden_path(artifact).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="not a readable golden file"):
        check_golden(Classifier(artifact))


def test_a_failed_golden_write_leaves_nothing(monkeypatch, model, tmp_path: Path) -> None:
    from edgeres.conversion import pipeline

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pipeline, "golden_bytes", refuse)
    with pytest.raises(OSError, match="disk full"):
        pipeline.convert(model, pipeline.ConvertOptions(target="onnx", out_dir=tmp_path, imgsz=32), log=lambda m: None)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".edgeres-lock-")] == []
