"""The accuracy budget does its job: a layer made sensitive on purpose is found and kept in float."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from edgeres.conversion.accuracy import layer_sensitivity
from edgeres.conversion.checked import convert_checked
from edgeres.conversion.pipeline import ConvertOptions
from edgeres.conversion.report import EvalSet
from edgeres.demo import DEMO_IMGSZ
from edgeres.preprocess import Preprocess
from tests.test_cli import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sensitive_model(model):
    """The digits model with every class's fc weight for feature 7 raised by 1000.

    All logits shift by the same amount, so FP32 top-1 (and softmax) are unchanged, but
    per-channel int8 weights for fc now have a step of about 8, and every other fc weight
    rounds to zero: INT8 collapses to chance unless fc stays in float.
    """
    sensitive = copy.deepcopy(model)
    with torch.no_grad():
        sensitive.module.fc.weight[:, 7] += 1000.0
    return sensitive


@pytest.fixture(scope="module")
def val(digits, model) -> EvalSet:
    return EvalSet.from_val(digits.test_dir, model.labels)


def test_sensitivity_ranks_the_broken_layer_first(sensitive_model, calib_dir, val) -> None:
    spec = Preprocess.imagenet(DEMO_IMGSZ)
    calibration = spec.tensors([frame for frame in val.frames[:64]])
    ranking = layer_sensitivity(sensitive_model.module, spec, calibration, val)
    assert ranking[0][0] == "fc" and ranking[0][1] > 100 * ranking[1][1]
    assert len(ranking) == 21  # 20 convolutions and fc in a ResNet18


@pytest.mark.parametrize("target", ["onnx", "x86"])
def test_budget_keeps_the_sensitive_layer_in_float(sensitive_model, calib_dir, digits, tmp_path: Path,
                                                   target: str) -> None:
    options = ConvertOptions(target=target, precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=100,
                             imgsz=DEMO_IMGSZ)
    checked = convert_checked(sensitive_model, options, val=digits.test_dir, max_drop=1.0, log=lambda m: None)
    budget = checked.row["budget"]
    assert checked.budget_failure is None and budget["met"]
    assert budget["tried"][0]["drop_points"] > 50  # plain INT8 is ruined
    assert checked.row["kept_float"] == ["fc"] and budget["tried"][-1]["drop_points"] <= 1.0
    assert checked.result.record.quantization["kept_float"] == ["fc"]
    assert checked.row["fp32_accuracy"] - checked.row["accuracy"] <= 0.01
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgeres-budget")]  # no scratch left


def test_budget_that_cannot_be_met_keeps_the_best(monkeypatch, capsys, sensitive_model, checkpoint, calib_dir,
                                                  digits, tmp_path: Path) -> None:
    """The NPU target quantizes every layer, so nothing can be kept in float: it says so, and keeps the artifact."""
    torch.save(sensitive_model.module.state_dict(), tmp_path / "sensitive.pt")
    code, out, err = run_cli(monkeypatch, capsys, "convert", tmp_path / "sensitive.pt", "--target", "npu", "--int8",
                             "--calib", calib_dir, "--calib-size", "100", "--imgsz", DEMO_IMGSZ,
                             "--labels", digits.labels_file, "--val", digits.test_dir, "--max-drop", "1",
                             "--out", tmp_path / "out")
    assert_one_red_line(code, err, "no INT8 artifact met the budget of 1 points")
    assert (tmp_path / "out" / "resnet18_npu_int8.onnx").is_file()
    report = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][0]
    assert report["budget"]["met"] is False and report["budget"]["tried"][0]["drop_points"] > 50


@pytest.mark.parametrize("args, message", [
    (["--max-drop", "1", "--int8"], "--max-drop needs labelled images"),
    (["--max-drop", "1", "--val", "VAL"], "--max-drop is an accuracy budget for INT8"),
    (["--max-drop", "-1", "--int8", "--val", "VAL"], "cannot be negative"),
    (["--keep-float", "fc"], "--keep-float is for INT8"),
    (["--keep-float", "layer9", "--int8"], "no layer named layer9"),
])
def test_bad_budget_options(monkeypatch, capsys, checkpoint, calib_dir, digits, tmp_path: Path, args, message) -> None:
    args = [str(digits.test_dir) if a == "VAL" else a for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--calib", calib_dir,
                           "--calib-size", "20", "--imgsz", DEMO_IMGSZ, "--out", tmp_path, *args)
    assert_one_red_line(code, err, message)


@pytest.mark.parametrize("target", ["npu", "rpi"])
def test_full_integer_targets_refuse_keep_float(monkeypatch, capsys, checkpoint, calib_dir, tmp_path, target) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", target, "--int8", "--calib",
                           calib_dir, "--keep-float", "fc", "--out", tmp_path)
    assert_one_red_line(code, err, f"target {target} quantizes every layer and cannot keep fc in float")
