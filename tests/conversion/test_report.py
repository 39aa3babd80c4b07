"""`edgeres convert` ends by proving each artifact: accuracy against FP32, latency, size, in report files."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from edgeres.demo import DEMO_IMGSZ
from edgeres.conversion.report import markdown
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def convert(monkeypatch, capsys, checkpoint, digits, out: Path, *args) -> str:
    code, stdout, err = run_cli(monkeypatch, capsys, "convert", checkpoint, "--imgsz", DEMO_IMGSZ,
                                "--labels", digits.labels_file, "--out", out, *args)
    assert code == 0, err
    return stdout


def test_report_accumulates_per_artifact(monkeypatch, capsys, checkpoint, digits, calib_dir, tmp_path: Path) -> None:
    printed = convert(monkeypatch, capsys, checkpoint, digits, tmp_path, "--target", "onnx",
                      "--val", digits.test_dir)
    assert "on 450 validation images: top-1" in printed and "report.png" in printed
    convert(monkeypatch, capsys, checkpoint, digits, tmp_path, "--target", "x86", "--int8", "--calib", calib_dir,
            "--calib-size", "100")
    convert(monkeypatch, capsys, checkpoint, digits, tmp_path, "--target", "onnx", "--val", digits.test_dir)
    rows = json.loads((tmp_path / "report.json").read_text())["artifacts"]
    assert [r["artifact"] for r in rows] == ["resnet18_x86_int8.xml", "resnet18_onnx_fp32.onnx"]  # replaced, not added
    int8, fp32 = rows
    assert fp32["eval_source"] == "validation" and fp32["accuracy"] == fp32["fp32_accuracy"] > 0.9
    assert fp32["agreement"] == 1.0 and fp32["size_mb"] > 40 and fp32["latency_p50_ms"] > 0
    # without --val, judged on the quarter of the calibration images that quantization never saw
    assert int8["eval_source"] == "held-out calibration" and int8["eval_images"] == 25
    assert int8["accuracy"] is None and int8["agreement"] >= 0.95
    assert 10 < int8["size_mb"] < 13  # the .bin counts
    assert int8["search"]["attempts"][0]["range_method"] and int8["search"]["met"]
    assert int8["search"]["fp32_stability"] is None  # measured only where the bar is missed
    assert json.loads((tmp_path / "resnet18_x86_int8" / "report.json").read_text())["artifacts"] == [int8]
    text = (tmp_path / "report.md").read_text()
    assert "| resnet18_x86_int8.xml | int8 |" in text and "| resnet18_onnx_fp32.onnx | fp32 |" in text
    assert "resnet18_x86_int8.xml: INT8 attempts (bar met" in text
    chart = cv2.imread(str(tmp_path / "report.png"))
    assert chart is not None and chart.shape[1] > 500


def test_report_accuracy_is_the_eval_number(monkeypatch, capsys, checkpoint, digits, converted, tmp_path) -> None:
    """The report's top-1 equals what edgeres eval computes for the same artifact and data."""
    convert(monkeypatch, capsys, checkpoint, digits, tmp_path, "--target", "onnx", "--int8", "--calib",
            digits.train_dir, "--calib-size", "64", "--val", digits.test_dir, "--name", "int8")
    row = json.loads((tmp_path / "report.json").read_text())["artifacts"][0]
    code, out, err = run_cli(monkeypatch, capsys, "eval", tmp_path / "int8" / "int8.onnx", "--data", digits.test_dir,
                             "--json")
    assert code == 0, err
    assert json.loads(out)["artifacts"]["int8.onnx"]["top1"] == pytest.approx(row["accuracy"])


def test_markdown_without_labels() -> None:
    row = {"artifact": "a.onnx", "precision": "int8", "size_mb": 1.0, "eval_images": 8, "eval_source": "random",
           "accuracy": None, "fp32_accuracy": None, "agreement": 0.875, "mean_kl": 1e-3, "latency_p50_ms": 2.0,
           "fps": 500.0, "kept_higher": []}
    assert "| a.onnx | int8 | 1.0 | 8 random | n/a | n/a | 87.50% |" in markdown([row])


def test_the_chart_shows_values_and_names_the_model_and_data() -> None:
    """Accuracy against latency, values on the marks, FP32 as a line, a title that says what was measured."""
    from edgeres.conversion.report import chart_figure

    rows = [{"artifact": name, "model": "resnet18 (model.pth)", "accuracy": accuracy, "fp32_accuracy": 0.95,
             "agreement": 0.99, "latency_p50_ms": ms, "size_mb": mb, "eval_images": 450, "eval_source": "validation"}
            for name, accuracy, ms, mb in (("m_fp32.onnx", 0.95, 9.5, 44.7), ("m_int8.xml", 0.9467, 3.1, 11.3))]
    figure = chart_figure(rows)
    axis = figure.axes[0]
    assert axis.get_title() == "resnet18 (model.pth): accuracy against latency, on 450 validation images"
    notes = [text.get_text() for text in axis.texts]
    assert "m_int8.xml\n94.67%, 3.10 ms, 11.3 MB" in notes and len(notes) == 2
    assert axis.get_legend().get_texts()[0].get_text() == "FP32 PyTorch model: 95.00%"
    assert axis.get_xlim()[0] == 0


def test_the_chart_never_marks_agreement_above_100_percent() -> None:
    from edgeres.conversion.report import chart_figure

    rows = [{"artifact": name, "model": "resnet18", "accuracy": None, "fp32_accuracy": None, "agreement": 1.0,
             "latency_p50_ms": ms, "size_mb": 10.0, "eval_images": 200, "eval_source": "calibration"}
            for name, ms in (("a.onnx", 3.0), ("b.xml", 2.0))]
    axis = chart_figure(rows).axes[0]
    assert axis.get_ylim()[1] > 100  # room for the values written above the points
    assert max(axis.get_yticks()) <= 100


def test_the_chart_shows_a_fine_tuning_run_beside_the_artifacts() -> None:
    from edgeres.conversion.report import chart_figure

    curve = [{"step": s, "seconds": s / 2, "loss": 0.02 / s, "agreement": 0.9 + s / 1000, "kl": 0.01} for s in (10, 20, 30)]
    tuned = {"artifact": "m_int8.onnx", "model": "resnet18", "accuracy": None, "fp32_accuracy": None,
             "agreement": 0.97, "latency_p50_ms": 3.0, "size_mb": 11.0, "eval_images": 50,
             "eval_source": "held-out calibration", "search": {"finetune": {"curve": curve}}}
    plain = {**tuned, "artifact": "m_fp32.onnx", "search": None}
    assert len(chart_figure([plain]).axes) == 1  # no run, no panel
    axes = chart_figure([plain, tuned]).axes
    assert len(axes) == 3 and "fine-tuning" in axes[1].get_title()  # the panel and its loss axis
    assert list(axes[1].lines[0].get_ydata()) == [91.0, 92.0, 93.0]
