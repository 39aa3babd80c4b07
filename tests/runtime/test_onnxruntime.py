"""ONNX Runtime's execution providers: TensorRT, then CUDA, where they exist (a Jetson), else the CPU."""

from __future__ import annotations

import pytest

from edgeres.errors import DeviceError
from edgeres.runtime.onnxruntime import providers_for

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
