from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edgeres.artifact import sidecar_path
from edgeres.errors import ArtifactError, EdgeresError, FrameError
from edgeres.runtime.classifier import Classifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(converted) -> Classifier:
    return Classifier(converted("onnx", "fp32").path, threads=1)


def test_predict_topk(classifier: Classifier, held_out) -> None:
    frames, truth = held_out
    predictions = classifier.predict(frames[0], topk=3)
    assert len(predictions) == 3
    probabilities = [p.probability for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert predictions[0].label == classifier.labels[predictions[0].index]
    assert classifier.labels == ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert len(classifier.predict(frames[0], topk=50)) == 10


def test_predict_batch_equals_predict(classifier: Classifier, held_out) -> None:
    frames, _ = held_out
    batch = classifier.predict_batch(frames[:4], topk=2)
    assert batch == [classifier.predict(frame, topk=2) for frame in frames[:4]]
    assert classifier.predict_batch([]) == []


def test_logits(classifier: Classifier, held_out) -> None:
    frames, truth = held_out
    logits = np.stack([classifier.logits(frame) for frame in frames])
    assert logits.shape == (len(frames), 10) and logits.dtype == np.float32
    assert (logits.argmax(1) == truth).mean() > 0.9


def test_grayscale_and_bgra_frames(classifier: Classifier, held_out) -> None:
    frame = held_out[0][0]
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert classifier.predict(gray, topk=1)[0].index == classifier.predict(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), topk=1)[0].index
    bgra = cv2.cvtColor(frame, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(classifier.logits(bgra), classifier.logits(frame))


@pytest.mark.parametrize("frame, message", [
    (None, "frame is None"),
    (np.zeros((0, 0, 3), np.uint8), "frame is empty"),
    (np.zeros((48, 48, 3), np.float64), "expected a uint8 frame"),
    (np.zeros((48, 48, 5), np.uint8), "expected an HxWx3"),
])
def test_bad_frames(classifier: Classifier, frame, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        classifier.predict(frame)


def test_bad_topk_and_threads(classifier: Classifier, converted, held_out) -> None:
    with pytest.raises(EdgeresError, match="topk must be at least 1"):
        classifier.predict(held_out[0][0], topk=0)
    with pytest.raises(EdgeresError, match=r"threads must be between 1 and \d+ \(the CPUs here\), got 0"):
        Classifier(converted("onnx", "fp32").path, threads=0)


def test_missing_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        Classifier(tmp_path / "model.onnx")


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "model.caffemodel"
    path.write_bytes(b"x")
    with pytest.raises(ArtifactError, match="no runtime backend for '.caffemodel' files; edgeres runs .onnx"):
        Classifier(path)


def test_corrupt_onnx(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"definitely not protobuf")
    with pytest.raises(ArtifactError, match="is not a valid ONNX model"):
        Classifier(path)


def _strip_metadata(path: Path) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.save(model, str(path))


def test_sidecar_is_used_when_metadata_is_absent(converted, copy_artifact) -> None:
    path = copy_artifact(converted("onnx", "fp32").path)
    _strip_metadata(path)
    assert Classifier(path).record == converted("onnx", "fp32").record


def test_no_record_at_all(converted, copy_artifact) -> None:
    path = copy_artifact(converted("onnx", "fp32").path, with_sidecar=False)
    _strip_metadata(path)
    with pytest.raises(ArtifactError, match="carries no edgeres record"):
        Classifier(path)


def test_an_edited_sidecar_is_refused_not_silently_overruled(converted, copy_artifact) -> None:
    path = copy_artifact(converted("onnx", "fp32").path)
    record = json.loads(sidecar_path(path).read_text())
    sidecar_path(path).write_text(json.dumps({**record, "labels": [f"x{i}" for i in range(10)]}))
    with pytest.raises(ArtifactError, match="disagree on labels; one was edited: delete the sidecar"):
        Classifier(path)
    sidecar_path(path).unlink()  # as the error says: the artifact's own record is then used
    assert Classifier(path).labels[0] == "zero"
