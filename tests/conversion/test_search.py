"""No dead ends: INT8 that misses the bar is searched until it meets it, on every target, or kept and reported."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from edgeres.conversion.pipeline import AccuracyBarError, ConvertOptions, convert
from edgeres.targets.npu import NpuTarget
from edgeres.demo import DEMO_IMGSZ
from tests.conftest import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sensitive_model(model):
    """The digits model with every class's fc weight for feature 7 raised by 1000.

    All logits shift by the same amount, so FP32 top-1 (and softmax) are unchanged, but
    per-channel int8 weights for fc now have a step of about 8, and every other fc weight
    rounds to zero: INT8 collapses unless fc is kept out of INT8.
    """
    sensitive = copy.deepcopy(model)
    with torch.no_grad():
        sensitive.module.fc.weight[:, 7] += 1000.0
    return sensitive


@pytest.mark.parametrize("target", ["x86", "rpi", "jetson", "mobile"])  # onnx keeps float as jetson does
def test_the_search_keeps_the_sensitive_layer_out(sensitive_model, calib_dir, digits, tmp_path: Path,
                                                  target: str) -> None:
    options = ConvertOptions(target=target, precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=64,
                             imgsz=DEMO_IMGSZ, val=digits.test_dir, report=False)
    result = convert(sensitive_model, options, log=lambda message: None)
    search = result.search
    assert result.met and search["met"]
    assert search["attempts"][0]["agreement"] < 0.5  # plain INT8 of this model is ruined
    # keeping fc alone rescues it; whether it also meets the 0.3-point bar on its own depends on the fixture,
    # which each machine trains for itself (measured: on an AVX-512 Xeon the rpi INT8 with fc kept lost 1.1
    # points, with XNNPACK and with TFLite's reference kernels alike, and the search kept 7 layers more)
    fc_alone = [a for a in search["attempts"] if a["kept_higher"] == ["fc"]]
    assert fc_alone and fc_alone[0]["agreement"] >= 0.96
    chosen = search["attempts"][search["chosen"]]
    assert chosen["kept_higher"][0] == "fc" and chosen["agreement"] >= 0.96 and chosen["drop_points"] <= 0.3
    assert search["sensitivity_top"][0][0] == "fc"
    design = result.record.quantization["design"]
    assert design["kept_higher"] == chosen["kept_higher"]
    assert design["range_method"] in ("minmax", "mean-minmax", "percentile", "mse")
    assert result.record.quantization["higher_precision"]  # what "kept out" means on this target
    assert all(check["passed"] for check in result.record.checks)  # NPU/TensorRT rules, XNNPACK coverage


def test_the_npu_cannot_rescue_int8_weights_and_says_so(sensitive_model, calib_dir, digits, tmp_path: Path) -> None:
    """An NPU keeps a layer out of INT8 with 16-bit activations, but its weights stay int8 (A16W8).

    This model's damage is in fc's weights, so no NPU attempt can meet the bar: the search
    must try keeping fc, keep the best artifact and report that the bar was not met.
    """
    options = ConvertOptions(target="npu", precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=64,
                             imgsz=DEMO_IMGSZ, val=digits.test_dir, report=False, max_kept=1, finetune="never")
    with pytest.raises(AccuracyBarError) as raised:
        convert(sensitive_model, options, log=lambda message: None)
    result = raised.value.result
    assert result.path.is_file() and not result.met
    assert any(attempt["kept_higher"] == ["fc"] for attempt in result.search["attempts"])
    best = result.search["attempts"][result.search["chosen"]]
    # the record says what "kept out" meant for the artifact kept: A16W8 if it kept a layer out at all
    assert result.record.quantization["higher_precision"] == (NpuTarget.higher_precision if best["kept_higher"] else None)
    assert "A16W8" in NpuTarget.higher_precision
    assert "--fp16" in str(raised.value)


def test_a_bar_that_cannot_be_met_keeps_the_best_and_exits_1(monkeypatch, capsys, sensitive_model, calib_dir,
                                                             digits, tmp_path: Path) -> None:
    torch.save(sensitive_model.module.state_dict(), tmp_path / "sensitive.pt")
    code, out, err = run_cli(monkeypatch, capsys, "convert", tmp_path / "sensitive.pt", "--target", "npu", "--int8",
                             "--calib", calib_dir, "--calib-size", "64", "--imgsz", DEMO_IMGSZ,
                             "--labels", digits.labels_file, "--val", digits.test_dir, "--max-kept", "0",
                             "--finetune-steps", "2", "--out", tmp_path / "out")
    assert_one_red_line(code, err, "no INT8 artifact met the bar")
    assert "--max-kept above 0" in err and "INT8 attempts" in out  # advice not yet tried; the table of attempts
    # fine-tuning, the last remedy, was tried (two steps cannot repair fc's weights) and is in the table
    assert "fine-tuned" in out and "Fine-tuning the closest plan" in err
    assert (tmp_path / "out" / "resnet18_npu_int8" / "resnet18_npu_int8.onnx").is_file()
    row = json.loads((tmp_path / "out" / "report.json").read_text())["artifacts"][0]
    assert row["search"]["met"] is False and row["search"]["attempts"][0]["agreement"] < 0.5
    text = (tmp_path / "out" / "report.md").read_text()
    assert "bar NOT met" in text
    # how steady FP32's own answers are on the images judged on: the fc change shifts every logit alike
    stability = row["search"]["fp32_stability"]
    assert stability["images"] == 450 and stability["agreement"] > 0.98 and stability["note"] is None
    assert f"FP32 itself keeps its answer on {stability['agreement']:.1%} of 450" in text
    assert "FP32 keeps its own answer on" in err and "FP32 itself changes" not in err


@pytest.mark.parametrize("args, message", [
    (["--max-drop", "1", "--int8"], "--max-drop needs labelled images"),
    (["--max-drop", "1", "--val", "VAL"], "--keep-float and --max-drop are for INT8"),
    (["--max-drop", "-1", "--int8", "--val", "VAL"], "cannot be negative"),
    (["--keep-float", "fc"], "--keep-float and --max-drop are for INT8"),
    (["--keep", "layer9", "--int8"], "no layer named layer9"),
    (["--min-agreement", "1.5", "--int8"], "--min-agreement is a fraction between 0 and 1"),
    (["--calib-method", "median", "--int8"], "--calib-method must be one of auto, minmax"),
    (["--finetune"], "--finetune-steps and --train are for INT8: add --int8"),
    (["--finetune-minutes", "3"], "are for INT8: add --int8"),
    (["--no-finetune", "--finetune-steps", "5", "--int8"], "cannot go with --no-finetune"),
    (["--finetune-minutes", "0", "--int8"], "--finetune-minutes must be a positive number"),
    (["--finetune-minutes", "nan", "--int8"], "--finetune-minutes must be a positive number"),
    (["--finetune-steps", "0", "--int8"], "--finetune-steps must be between 1 and"),
    (["--train", "VAL", "--no-finetune", "--int8"], "cannot go with --no-finetune"),
    (["--train", "missing-folder", "--int8"], "--train missing-folder is not a folder"),
])
def test_bad_search_options(monkeypatch, capsys, checkpoint, calib_dir, digits, tmp_path: Path, args, message) -> None:
    args = [str(digits.test_dir) if a == "VAL" else a for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--target", "onnx", "--calib", calib_dir,
                           "--calib-size", "20", "--imgsz", DEMO_IMGSZ, "--out", tmp_path, *args)
    assert_one_red_line(code, err, message)


def test_fine_tuning_never_sees_the_images_int8_is_judged_on(monkeypatch, model, calib_dir, tmp_path: Path) -> None:
    """Without --val a quarter of the calibration images is held back: neither the ranges nor the
    fine-tuning see it, and the bar, the record and the report are judged on it."""
    import numpy as np

    from edgeres.quantization import finetune as finetune_module

    seen = {}
    original = finetune_module.finetune

    def spy(module, ranges, higher, teacher, train, held_out, held_reference, **options):
        seen["train"], seen["held_out"] = train, held_out
        return original(module, ranges, higher, teacher, train, held_out, held_reference, **options)

    monkeypatch.setattr(finetune_module, "finetune", spy)
    options = ConvertOptions(target="onnx", precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=64,
                             imgsz=DEMO_IMGSZ, report=False, finetune="always", finetune_steps=4, seed=3)
    result = convert(model, options, log=lambda message: None)
    search = result.search
    assert search["evaluated_on"] == "16 held-out calibration images"
    assert (result.record.calibration["used"], result.record.calibration["held_out"]) == (48, 16)
    train, held = seen["train"].reshape(len(seen["train"]), -1), seen["held_out"].reshape(16, -1)
    assert len(train) == 48 and not any(np.array_equal(row, other) for row in held for other in train)
    tuned = [attempt for attempt in search["attempts"] if attempt["finetuned"]]
    assert len(tuned) == 1  # --finetune: tried although the first attempt met the bar
    assert search["finetune"]["steps"] == 4 and search["finetune"]["training_images"] == 48
    chosen = search["attempts"][search["chosen"]]
    assert result.record.quantization["design"]["finetuned"] == chosen["finetuned"]
    assert search["attempts"][0]["finetuned"] is False


def test_fine_tuning_is_not_judged_on_what_it_trains_on(model, calib_dir, tmp_path: Path, capsys) -> None:
    """Below 40 calibration images none are held back: asked for, fine-tuning is refused; as the remedy
    it is left out, and the log says why."""
    from edgeres.errors import EdgeresError

    options = ConvertOptions(target="onnx", precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=20,
                             imgsz=DEMO_IMGSZ, report=False, finetune="always")
    with pytest.raises(EdgeresError, match="--finetune needs images it does not train on"):
        convert(model, options, log=lambda message: None)
    said = []
    options = ConvertOptions(target="onnx", precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=20,
                             imgsz=DEMO_IMGSZ, report=False, name="auto")
    convert(model, options, log=said.append)
    assert any("Fine-tuning left out" in line for line in said)


def test_a_plan_the_targets_compiler_crashes_on_is_recorded_and_the_search_goes_on(
        monkeypatch, sensitive_model, calib_dir, digits, tmp_path: Path) -> None:
    """rknn-toolkit2 crashed (SIGSEGV) on the hard ResNet50 with 16 layers kept: the search stops climbing,
    says so in the record, and ends on the attempts it has instead of losing them."""
    from edgeres.errors import PlanRefusedError
    from edgeres.targets.onnx import OnnxTarget

    build = OnnxTarget.build

    def crashing(self, job, plan, scratch):
        if plan and plan.higher:
            raise PlanRefusedError("the compiler crashed (signal 11)")
        return build(self, job, plan, scratch)

    monkeypatch.setattr(OnnxTarget, "build", crashing)
    options = ConvertOptions(target="onnx", precision="int8", out_dir=tmp_path, calib=calib_dir, calib_size=64,
                             imgsz=DEMO_IMGSZ, val=digits.test_dir, report=False, finetune="never")
    with pytest.raises(AccuracyBarError, match=r"\(\d+ tried; the compiler failed keeping 1 layers: the compiler "
                       r"crashed \(signal 11\), up to 0 layers kept out of INT8\)") as failed:
        convert(sensitive_model, options, log=lambda message: None)
    assert "--max-kept" not in str(failed.value)  # more kept layers is what failed
    search = failed.value.result.search
    assert search["refused"] == [{"kept_higher": ["fc"], "why": "the compiler crashed (signal 11)"}]
    assert all(not attempt["kept_higher"] for attempt in search["attempts"]) and not search["met"]
