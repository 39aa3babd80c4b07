from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest

from edgeres.errors import ArtifactError, DeviceError, EdgeresError, ModeUnavailableError
from edgeres.preprocess import Preprocess
from edgeres.runtime.classifier import Classifier
from edgeres.runtime.openvino import (NEEDED_FOR, OPENVINO_TYPES, _compute_precisions, compile_config,
                                      device_precisions, host_precisions)

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


def test_every_mode_is_asked_for_by_name() -> None:
    """The hint is always given: unset, OpenVINO picks bf16 on AVX512-BF16/AMX CPUs and f16 on ARM."""
    assert compile_config("fp32", 2, "LATENCY") == {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 2}
    assert compile_config("bf16", None, "THROUGHPUT")["INFERENCE_PRECISION_HINT"] == "bf16"
    assert compile_config("fp16", None, "THROUGHPUT")["INFERENCE_PRECISION_HINT"] == "f16"


@pytest.mark.parametrize("capabilities, modes", [
    (["FP32", "INT8", "BIN", "EXPORT_IMPORT"], ("fp32",)),  # AVX2, AVX-512 VNNI without BF16
    (["FP32", "BF16", "INT8", "BIN", "EXPORT_IMPORT"], ("fp32", "bf16")),  # Zen 4, Cooper Lake
    (["FP32", "BF16", "FP16", "INT8", "BIN", "EXPORT_IMPORT"], ("fp32", "bf16", "fp16")),  # Sapphire Rapids and later (AVX512-FP16)
    (["FP32", "FP16", "INT8", "EXPORT_IMPORT"], ("fp32", "fp16")),  # ARM
])
def test_modes_follow_the_devices_capabilities(capabilities, modes) -> None:
    assert device_precisions(capabilities) == modes


def _compiled_type(classifier: Classifier) -> str:
    return classifier._backend._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_ir_runs_in_f32_whatever_the_host_would_pick(converted, precision: str) -> None:
    """Read back from the compiled model: on a bf16 or ARM host this fails unless the IR is pinned."""
    classifier = Classifier(converted("x86", precision).path)
    assert classifier.execution_precision == "fp32" and _compiled_type(classifier) == "f32"


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_a_faster_mode_runs_where_the_cpu_has_it_and_is_refused_where_not(converted, model, held_out,
                                                                          mode: str) -> None:

    path = converted("x86", "fp32").path
    if mode not in host_precisions():
        with pytest.raises(DeviceError, match=rf"cannot run in {mode} on .*: OpenVINO offers fp32"):
            Classifier(path, precision=mode)
        pytest.skip(f"this CPU has no {mode} arithmetic for OpenVINO (refusal checked; the mode itself "
                    f"runs on {NEEDED_FOR[mode]})")
    try:
        classifier = Classifier(path, precision=mode)
    except ModeUnavailableError as error:  # the hint taken, the layers not (the guard): read from the runtime model
        assert mode == "fp16" and "runs its convolutions in f32" in str(error) and "use fp32" in str(error)
        # and seen in what it computes: OpenVINO itself, with the f16 hint, gives FP32's logits
        as_built = Classifier(path)
        model, inputs = as_built._backend._model, as_built.preprocess.batch(held_out[0][:16])
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f16"})
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f16"
        hinted = np.concatenate([compiled(row[None])[0] for row in inputs])  # the IR takes a batch of 1
        assert np.abs(hinted - as_built.logits_batch(held_out[0][:16])).max() < 1e-4
        pytest.skip(f"OpenVINO offers {mode} on this CPU but runs the convolutions in f32 (refusal checked): {error}")
    assert classifier.execution_precision == mode and _compiled_type(classifier) == OPENVINO_TYPES[mode]
    crops = [classifier.preprocess.resize_and_crop(frame) for frame in held_out[0][:64]]
    logits = classifier.logits_batch(held_out[0][:64])
    reference = model.logits(Preprocess.imagenet(32).tensors(crops))
    assert np.abs(logits - reference).max() > 1e-5  # really another arithmetic, not f32 again
    assert np.abs(logits - reference).max() <= 0.02 * np.abs(reference).max()
    assert (logits.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_a_mode_is_refused_by_runtimes_without_modes(converted) -> None:
    with pytest.raises(DeviceError, match="runs on onnxruntime in the precision it was built in; there is no "
                                          "bf16 mode"):
        Classifier(converted("onnx", "fp32").path, precision="bf16")
    with pytest.raises(EdgeresError, match="precision must be one of fp32, bf16, fp16, got 'fp8'"):
        Classifier(converted("x86", "fp32").path, precision="fp8")


def test_the_record_says_what_each_mode_costs_or_why_it_was_not_measured(converted) -> None:
    verification = converted("x86", "fp32").record.verification
    assert verification["execution_precision"] == "fp32" and set(verification["modes"]) == {"bf16", "fp16"}
    for mode, found in verification["modes"].items():
        if mode not in host_precisions():
            assert not found["measured"] and f"{mode} needs" in found["reason"]
        elif found["measured"]:
            assert 0 < found["max_abs_logit_diff"] and found["top1_agreement"] >= 0.9
        else:  # listed by the CPU, but not what OpenVINO computes the convolutions in (fp16 on an AVX512-FP16 Xeon)
            assert mode == "fp16" and "runs the convolutions in f32" in found["reason"]
    assert "modes" not in converted("onnx", "fp32").record.verification


def test_compiled_model_cache(converted, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EDGERES_CACHE_DIR", str(tmp_path))
    path = converted("x86", "fp32").path
    Classifier(path)
    assert any((tmp_path / "openvino" / "fp32").iterdir())
    # a mode never loads another mode's cached model (OpenVINO 2026.4.1 did: f16 got the cached f32 blob)
    for mode in host_precisions()[1:]:
        compiled = Classifier(path, precision=mode)._backend._compiled
        assert OPENVINO_TYPES[mode] in _compute_precisions(compiled)
        assert any((tmp_path / "openvino" / mode).iterdir())


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
