from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeres.exporters import tflite_tools
from edgeres.conversion.pipeline import ConvertOptions, convert, torch_logits
from edgeres.errors import TargetError
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier
from edgeres.runtime.tflite import read_metadata, xnnpack_coverage

pytestmark = pytest.mark.slow


def _predictions(path: Path, frames) -> np.ndarray:
    return Classifier(path).logits_batch(frames).argmax(1)


def test_fp32_logits_match_pytorch(converted, model, held_out) -> None:
    """FP32 TFLite with the normalisation folded in reproduces PyTorch within 1e-4."""
    classifier = Classifier(converted("rpi", "fp32").path)
    frames, _ = held_out
    crops = [classifier.preprocess.resize_and_crop(frame) for frame in frames[:64]]
    reference = torch_logits(model.module, Preprocess.imagenet(32).tensors(crops))
    assert np.abs(classifier.logits_batch(frames[:64]) - reference).max() < 1e-4


def test_int8_accuracy_bars(converted, held_out) -> None:
    """Full-integer INT8 agrees with FP32 on >= 99% of held-out images and loses <= 0.5 points."""
    frames, truth = held_out
    fp32 = _predictions(converted("rpi", "fp32").path, frames)
    int8 = _predictions(converted("rpi", "int8").path, frames)
    assert (int8 == fp32).mean() >= 0.99
    assert (fp32 == truth).mean() - (int8 == truth).mean() <= 0.005


def test_int8_is_full_integer_with_raw_pixel_input(converted) -> None:
    result = converted("rpi", "int8")
    details = tflite_tools.io_details(result.path.read_bytes())
    assert (details.input_dtype, details.input_scale, details.input_zero_point) == ("int8", 1.0, -128)
    assert details.input_shape == (1, 32, 32, 3) and details.output_dtype == "int8"
    spec = Classifier(result.path).preprocess
    assert (spec.layout, spec.color, spec.dtype, spec.input_scale, spec.input_zero_point) == \
        ("NHWC", "BGR", "int8", 1.0, -128)
    crop = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    np.testing.assert_array_equal(spec.to_tensor(crop), crop.astype(np.int16) - 128)  # pixel - 128, exactly
    assert result.record.quantization["kind"] == "static full-integer"


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_op_runs_in_xnnpack(converted, precision: str) -> None:
    result = converted("rpi", precision)
    coverage = xnnpack_coverage(result.path)
    assert coverage["outside"] == [] and coverage["delegated"] == coverage["ops"] > 30
    assert result.record.checks[0]["passed"]


def test_coverage_finds_ops_outside_xnnpack(tmp_path: Path) -> None:
    """A channel flip (REVERSE_V2) has no XNNPACK kernel: the coverage check must say so."""

    class Flip(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.relu(x.flip(3)) * 2

    path = tmp_path / "flip.tflite"
    tflite_tools.convert(Flip(), torch.zeros(1, 8, 8, 3), path)
    coverage = xnnpack_coverage(path)
    assert "REVERSE_V2" in coverage["outside"]


def test_record_in_tflite_metadata(converted) -> None:
    result = converted("rpi", "int8")
    assert read_metadata(result.path.read_bytes()) == result.record.to_json()
    assert result.path.stat().st_size > 10_000_000  # the weights survived the metadata rewrite


def test_fp16_weights_halve_the_size(converted) -> None:
    assert converted("rpi", "fp16").path.stat().st_size < 0.55 * converted("rpi", "fp32").path.stat().st_size


def test_dynamic_batch_is_refused(model, tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="static batch of 1"):
        convert(model, ConvertOptions(target="rpi", dynamic_batch=True, out_dir=tmp_path, imgsz=32))
