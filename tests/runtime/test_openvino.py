from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from edgeres.errors import ArtifactError, DeviceError
from edgeres.runtime.classifier import Classifier
from edgeres.runtime.openvino import compile_config

pytestmark = pytest.mark.slow


def test_stream_keeps_frame_order(converted, held_out) -> None:
    classifier = Classifier(converted("x86", "int8").path, threads=2)
    frames, _ = held_out
    frames = frames[:40]
    streamed = [p[0].index for p in classifier.stream(iter(frames), topk=1)]
    assert streamed == [classifier.predict(f, topk=1)[0].index for f in frames]
    assert list(classifier.stream([])) == []


def test_stream_hands_out_each_result_before_the_next_input_arrives(converted, held_out) -> None:
    """A live source: result i must not wait for frame i+1 (a camera delivers it 33 ms later)."""
    import threading

    classifier = Classifier(converted("x86", "int8").path, threads=2)
    frames, _ = held_out
    delivered = threading.Semaphore(0)

    def camera():
        for frame in frames[:6]:
            yield frame
            assert delivered.acquire(timeout=10), "the previous result was held back until this frame"

    for _ in classifier.stream(camera(), topk=1):
        delivered.release()


def test_stream_raises_the_input_error_and_stops_early(converted, held_out) -> None:
    classifier = Classifier(converted("x86", "int8").path, threads=2)
    frames, _ = held_out

    def failing():
        yield from frames[:3]
        raise OSError("camera unplugged")

    delivered = []
    with pytest.raises(OSError, match="camera unplugged"):
        for prediction in classifier.stream(failing(), topk=1):
            delivered.append(prediction)
    assert len(delivered) == 3  # every frame before the error, then the error
    endless = classifier.stream(itertools.repeat(frames[0]), topk=1)
    assert [next(endless) for _ in range(3)] and endless.close() is None


def test_a_failed_inference_raises_in_its_stream_and_the_next_stream_works(converted, held_out) -> None:
    """A request whose inference failed is never reused: later streams on the backend are unaffected."""
    classifier = Classifier(converted("x86", "int8").path, threads=2)
    frames, _ = held_out
    good = classifier.preprocess(frames[0])
    for _ in range(3):  # more failures than one stream has requests
        with pytest.raises(RuntimeError):
            list(classifier._backend.stream([good, good, np.zeros((5, 5, 3), np.uint8)]))
    assert [p[0].index for p in classifier.stream(frames[:5], topk=1)] == \
        [classifier.predict(f, topk=1)[0].index for f in frames[:5]]


def test_onnx_stream_falls_back_to_one_by_one(converted, held_out) -> None:
    classifier = Classifier(converted("onnx", "fp32").path)
    frames, _ = held_out
    assert [p[0].index for p in classifier.stream(frames[:5], topk=1)] == \
        [classifier.predict(f, topk=1)[0].index for f in frames[:5]]


def test_fp32_is_pinned_to_f32() -> None:
    """On CPUs with native bf16 OpenVINO would run float models in bf16; fp32 artifacts must not."""
    assert compile_config("fp32", 2, "LATENCY") == {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    assert "INFERENCE_PRECISION_HINT" not in compile_config("int8", None, "THROUGHPUT")


def test_compiled_model_cache(converted, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGERES_CACHE_DIR", str(tmp_path))
    Classifier(converted("x86", "fp32").path)
    assert any((tmp_path / "openvino").iterdir())


def test_missing_bin(converted, tmp_path: Path) -> None:
    shutil.copy(converted("x86", "fp32").path, tmp_path / "model.xml")
    with pytest.raises(ArtifactError, match="model.bin is missing beside model.xml"):
        Classifier(tmp_path / "model.xml")


def test_ir_of_another_model_family(tmp_path: Path) -> None:
    """A two-input detector-like IR is refused with a message that says why."""
    image = ops.parameter([1, 3, 32, 32], np.float32, name="image")
    extra = ops.parameter([1, 4], np.float32, name="boxes")
    model = ov.Model([ops.relu(image), ops.relu(extra)], [image, extra], "not_a_classifier")
    ov.save_model(model, str(tmp_path / "detector.xml"))
    with pytest.raises(ArtifactError, match="is not an image classifier: expected 1 input of rank 4"):
        Classifier(tmp_path / "detector.xml")


def test_unknown_device(converted) -> None:
    with pytest.raises(DeviceError, match="OpenVINO device 'NPU7' is not available here; available: CPU"):
        Classifier(converted("x86", "fp32").path, device="NPU7")


def test_onnx_runtime_device(converted) -> None:
    with pytest.raises(DeviceError, match="unknown ONNX Runtime device 'GPU'"):
        Classifier(converted("onnx", "fp32").path, device="GPU")


def test_corrupt_xml(tmp_path: Path) -> None:
    (tmp_path / "model.xml").write_text("<net>broken")
    (tmp_path / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match="not a readable OpenVINO IR"):
        Classifier(tmp_path / "model.xml")
