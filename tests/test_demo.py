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


def test_imagenet_demo_says_where_the_weights_go(monkeypatch, capsys, tmp_path: Path) -> None:
    import urllib.error

    import torch

    from tests.conftest import assert_one_red_line, run_cli

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *args, **kwargs: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    code, _, err = run_cli(monkeypatch, capsys, "demo", "--weights", "imagenet", "--out", tmp_path / "demo")
    assert_one_red_line(code, err, "resnet18-f37072fd.pth")


def test_imagenet_demo_inputs(monkeypatch, tmp_path: Path) -> None:
    """With the weights file on disk: the ImageNet model, 224x224, calibration on photo crops."""
    import torch
    import torchvision

    from edgeres.demo import _pretrained_inputs

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    inputs = _pretrained_inputs(tmp_path / "demo", "imagenet", log=lambda message: None)
    assert inputs.imgsz == 224 and inputs.model.labels[0] == "tench"
    assert len(inputs.images) == 64 and all(label is None for _, label in inputs.images)
    assert inputs.pytorch == {"weights": "ResNet18_Weights.IMAGENET1K_V1"}
