from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeres.exporters import tflite_tools
from edgeres.conversion.pipeline import ConvertOptions, convert
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
    reference = model.logits(Preprocess.imagenet(32).tensors(crops))
    assert np.abs(classifier.logits_batch(frames[:64]) - reference).max() < 1e-4


def test_int8_accuracy_bars(converted, held_out) -> None:
    """Full-integer INT8 agrees with FP32 on >= 99% of held-out images and loses <= 0.5 points."""
    frames, truth = held_out
    fp32 = _predictions(converted("rpi", "fp32").path, frames)
    int8 = _predictions(converted("rpi", "int8").path, frames)
    assert (int8 == fp32).mean() >= 0.99
    assert (fp32 == truth).mean() - (int8 == truth).mean() <= 0.005


def test_int8_takes_uint8_rgb_pixels_and_gives_float_scores(converted) -> None:
    """What a camera gives and MediaPipe / Coral feed: uint8 RGB pixels (scale 1, zero point 0)."""
    result = converted("rpi", "int8")
    details = tflite_tools.io_details(result.path.read_bytes())
    assert (details.input_dtype, details.input_scale, details.input_zero_point) == ("uint8", 1.0, 0)
    assert details.input_shape == (1, 32, 32, 3) and details.output_dtype == "float32"
    spec = Classifier(result.path).preprocess
    assert (spec.layout, spec.color, spec.dtype, spec.input_scale, spec.input_zero_point) == \
        ("NHWC", "RGB", "uint8", 1.0, 0)
    crop = np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3)
    np.testing.assert_array_equal(spec.to_tensor(crop), crop[..., ::-1])  # the pixels, in RGB order, exactly
    assert result.record.quantization["kind"] == "static full-integer"


def test_standard_metadata_and_labels_file(converted) -> None:
    """TFLite's standard metadata entry and the labels file packed after the model, in every precision."""
    from edgeres.exporters import tflite_metadata

    for precision in ("fp32", "int8"):
        result = converted("rpi", precision)
        data = result.path.read_bytes()
        assert tflite_metadata.labels_file(data) == result.record.labels
        metadata = _metadata_entry(data, tflite_metadata.NAME)
        assert metadata[4:8] == tflite_metadata.IDENTIFIER and b"labels.txt" in metadata
        assert read_metadata(data) == result.record.to_json()  # edgeres' own record survives beside it


def test_embedding_again_replaces_not_adds(converted, tmp_path: Path) -> None:
    from edgeres.targets.tflite import TfliteTarget

    result = converted("rpi", "int8")
    copy = tmp_path / result.path.name
    copy.write_bytes(result.path.read_bytes())
    artifact = type("Built", (), {"path": copy, "inputs": result.record.inputs})()
    TfliteTarget().embed_record(artifact, result.record)
    assert copy.stat().st_size == result.path.stat().st_size
    assert tflite_tools.io_details(copy.read_bytes()) == tflite_tools.io_details(result.path.read_bytes())


def test_a_float_fc_keeps_its_float_scores(converted) -> None:
    """With fc kept out of INT8 the scores are float already: nothing is added after them."""
    result = converted("rpi", "int8", keep=("fc",))
    details = tflite_tools.io_details(result.path.read_bytes())
    assert (details.input_dtype, details.output_dtype) == ("uint8", "float32")
    assert result.record.quantization["design"]["kept_higher"] == ["fc"]


def _metadata_entry(model_bytes: bytes, name: str) -> bytes:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for index in range(model.MetadataLength()):
        if model.Metadata(index).Name().decode() == name:
            return model.Buffers(model.Metadata(index).Buffer()).DataAsNumpy().tobytes()
    raise AssertionError(f"no metadata entry {name}")


MEDIAPIPE_PYTHON = Path(__file__).parents[2] / ".venv-mediapipe" / "bin" / "python"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_mediapipe_image_classifier_agrees_with_edgeres(converted, held_out, tmp_path: Path, precision: str) -> None:
    """MediaPipe Tasks' ImageClassifier runs the .tflite from its metadata alone and scores
    held-out digits within 1 point of edgeres, given the region edgeres' crop shows
    (`Preprocess.crop_box`) as its region of interest: MediaPipe resizes the whole region it
    is given, edgeres resizes the frame, then crops. What is left is the resize filter
    (MediaPipe's bilinear has no antialiasing).

    MediaPipe pulls opencv-contrib-python, which would replace the OpenCV the project
    tests with, so it lives in its own venv (bootstrap.sh makes it) and runs as a process.
    """
    import cv2
    import json
    import subprocess

    if not MEDIAPIPE_PYTHON.exists():
        pytest.skip(f"no MediaPipe venv at {MEDIAPIPE_PYTHON.parent.parent} (./bootstrap.sh makes it)")
    result = converted("rpi", precision)
    frames, truth = held_out
    assert {frame.shape for frame in frames} == {(48, 48, 3)}  # one region for all
    spec = Classifier(result.path).preprocess
    ours = _predictions(result.path, frames)

    def mediapipe(images: list[np.ndarray], box: tuple[float, ...], folder: str) -> np.ndarray:
        (tmp_path / folder).mkdir()
        paths = [str(tmp_path / folder / f"{index:04d}.png") for index in range(len(images))]
        for path, image in zip(paths, images):
            cv2.imwrite(path, image)
        command = [str(MEDIAPIPE_PYTHON), str(Path(__file__).with_name("mediapipe_classify.py")), str(result.path),
                   ",".join(map(str, box)), *paths]
        run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        answers = json.loads(run.stdout)
        indices = np.array([index for index, _ in answers])
        assert [name for _, name in answers] == [result.record.labels[i] for i in indices]  # from the labels file
        return indices

    # edgeres' own crops as whole images: only the file's metadata stands between the two (450 of
    # 450 measured; two TFLite builds may still split an exact tie)
    assert (mediapipe([spec.resize_and_crop(f) for f in frames], (0, 0, 1, 1), "crops") == ours).mean() >= 0.995
    theirs = mediapipe(frames, spec.crop_box(48, 48), "frames")
    assert (theirs == ours).mean() >= 0.985
    assert abs((theirs == truth).mean() - (ours == truth).mean()) <= 0.01


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
