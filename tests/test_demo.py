from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeres.demo import QUICK_ARTIFACTS, run_demo


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    """The README's main job, in its quick form: train, convert, score on held-out digits."""
    report = run_demo(tmp_path, epochs=3, quick=True, log=lambda message: None)
    rows = report["artifacts"]
    names = [row["artifact"].rsplit(".", 1)[0] for row in rows]
    assert names == [f"resnet18_{t}_{p}" for t, p in QUICK_ARTIFACTS]
    assert [row["runtime"].split(" ")[0] for row in rows] == ["onnxruntime", "onnxruntime", "openvino", "tflite"]
    assert json.loads((tmp_path / "report.json").read_text()) == report
    fp32, *int8_rows = rows
    assert fp32["accuracy"] == pytest.approx(report["pytorch"]["test_accuracy"], abs=0.005)
    assert all(row["agreement"] >= 0.98 for row in int8_rows)
    assert all(row["size_mb"] < fp32["size_mb"] / 3.5 for row in int8_rows)
    video = report["video"]
    assert video["frames_read"] == 150 and video["frames_classified"] > 0
    assert (tmp_path / "video" / "annotated.mp4").is_file()
