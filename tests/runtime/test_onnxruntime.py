"""ONNX Runtime's execution providers: TensorRT, then CUDA, where they exist (a Jetson), else the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeres.errors import DeviceError
from edgeres.runtime.onnxruntime import int8_kernels_saturate, providers_for

JETSON = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_default_prefers_tensorrt_then_cuda_then_cpu() -> None:
    assert providers_for(None, JETSON) == JETSON
    assert providers_for(None, JETSON[1:]) == JETSON[1:]
    assert providers_for(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_asking_for_what_is_missing() -> None:
    assert providers_for("CPU", JETSON) == ["CPUExecutionProvider"]
    assert providers_for("CUDA", JETSON) == JETSON[1:]
    with pytest.raises(DeviceError, match="needs TensorrtExecutionProvider, CUDAExecutionProvider.*onnxruntime-gpu"):
        providers_for("TensorRT", ["CPUExecutionProvider"])


@pytest.mark.slow
def test_classifier_on_this_machine_uses_the_cpu(converted) -> None:
    from edgeres.runtime.classifier import Classifier

    classifier = Classifier(converted("jetson", "int8").path)
    assert classifier._backend.providers == ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="this ONNX Runtime lacks"):
        Classifier(converted("jetson", "int8").path, device="TensorRT")


def test_int8_kernels_saturate_only_without_vnni() -> None:
    assert int8_kernels_saturate({"avx2", "fma"})
    assert not int8_kernels_saturate({"avx2", "avx_vnni"}) and not int8_kernels_saturate({"avx512f", "avx512_vnni"})


@pytest.mark.slow
def test_int8_runs_exactly_as_quantized(converted, held_out) -> None:
    """The backend's INT8 answers are the Q/DQ graph's own, computed op by op without fused kernels."""
    import onnxruntime as ort

    from edgeres.runtime.classifier import Classifier

    path = converted("onnx", "int8").path
    classifier = Classifier(path)
    batch = np.stack([classifier.preprocess(frame) for frame in held_out[0][:64]])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    reference = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    exact = np.concatenate([reference.run(None, {"input": image[None]})[0] for image in batch])
    ours = np.concatenate([classifier._backend.run(image[None]) for image in batch])
    # the same quantized graph; float accumulation order may flip a rounding, never more
    assert (ours.argmax(1) == exact.argmax(1)).mean() >= 0.98
    assert np.abs(ours - exact).mean() < 0.01


@pytest.mark.parametrize("data", [b"p\x01", b"r\x02\x08\x01", b"r\x0a\x08" + b"\xff" * 8 + b"\x7f",
                                  b"\xff" * 100_000, b"", b"not an onnx model"])
def test_reading_the_record_of_a_non_model_finds_none(tmp_path: Path, data: bytes) -> None:
    """`edgeres info` without ONNX Runtime reads the protobuf by hand: junk is no record, at once."""
    from edgeres.runtime.onnxruntime import OnnxRuntimeBackend

    path = tmp_path / "junk.onnx"
    path.write_bytes(data)
    assert OnnxRuntimeBackend.read_record(path) is None
