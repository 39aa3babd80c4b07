from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeres.demo import QUICK_ARTIFACTS, run_demo


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path) -> None:
    """The README's main job, in its quick form: train, convert, score on held-out digits."""
    rows = run_demo(tmp_path, epochs=3, quick=True, log=lambda message: None)
    assert [row["artifact"] for row in rows] == [f"resnet18_{t}_{p}.onnx" for t, p in QUICK_ARTIFACTS]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["artifacts"] == rows
    fp32, int8 = rows
    assert fp32["accuracy"] == pytest.approx(report["pytorch"]["test_accuracy"], abs=0.005)
    assert int8["agreement"] >= 0.98
