from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeres.errors import ArtifactError, DeviceError
from edgeres.runtime.classifier import Classifier

pytestmark = pytest.mark.slow


def test_backend_and_batch(converted, held_out) -> None:
    classifier = Classifier(converted("rpi", "int8").path, threads=2)
    assert classifier.backend_name.startswith("tflite")
    frames, _ = held_out
    assert classifier.predict_batch(frames[:3], topk=1) == [classifier.predict(f, topk=1) for f in frames[:3]]


def test_corrupt_tflite(tmp_path: Path) -> None:
    path = tmp_path / "model.tflite"
    path.write_bytes(b"TFL3 but not really a model")
    with pytest.raises(ArtifactError, match="not a valid TFLite model"):
        Classifier(path)


def test_device(converted) -> None:
    with pytest.raises(DeviceError, match="TFLite backend runs on the CPU"):
        Classifier(converted("rpi", "fp32").path, device="GPU")


def test_float_input_is_quantized_with_the_models_parameters(converted, held_out) -> None:
    classifier = Classifier(converted("rpi", "int8").path)
    crop = classifier.preprocess.resize_and_crop(held_out[0][0])
    as_float = classifier.preprocess.replace(dtype="float32", input_scale=None, input_zero_point=None).to_tensor(crop)
    np.testing.assert_array_equal(classifier._backend.run(as_float[None]),
                                  classifier._backend.run(classifier.preprocess.to_tensor(crop)[None]))


def test_metadata_of_a_non_flatbuffer_is_none() -> None:
    from edgeres.runtime.tflite import read_metadata

    for data in (b"", b"garbage!", b"\x10\x00\x00\x00TFL3" + b"\xff" * 64, bytes(range(256)) * 4):
        assert read_metadata(data) is None
