"""Each example runs here with the backend that exists here, as a user would run it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgeres.demo import DIGIT_LABELS

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(script: str, *args) -> str:
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("script, target, precision", [
    ("rpi_tflite.py", "rpi", "int8"),
    ("x86_openvino.py", "x86", "int8"),
    ("npu_onnx.py", "npu", "int8"),
    ("classify_image.py", "onnx", "fp32"),
    ("jetson_tensorrt.py", "jetson", "int8"),  # ONNX Runtime here: no TensorRT on this machine
])
def test_device_example_classifies_a_digit(converted, digits, script: str, target: str, precision: str) -> None:
    image, label = digits.test_images()[0]
    printed = run_example(script, converted(target, precision).path, image)
    assert DIGIT_LABELS[label] in printed


def test_camera_demo_headless(converted, clip, tmp_path: Path) -> None:
    path, truth = clip
    printed = run_example("camera_demo.py", converted("x86", "int8").path, path, "--out", tmp_path, "--max-frames", 20)
    assert "20/" in printed and (tmp_path / "annotated.mp4").stat().st_size > 0
