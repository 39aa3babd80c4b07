from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeres.conversion.pipeline import ConvertOptions, convert
from edgeres.errors import CalibrationError, EdgeresError, VerificationError
from edgeres.runtime.classifier import Classifier

pytestmark = pytest.mark.slow


def _predictions(classifier: Classifier, frames) -> np.ndarray:
    return classifier.logits_batch(frames).argmax(1)


def test_fp32_logits_match_pytorch(converted, model, held_out) -> None:
    """FP32 ONNX reproduces PyTorch: max |logit difference| below 1e-4 on held-out images."""
    classifier = Classifier(converted("onnx", "fp32").path)
    frames, _ = held_out
    inputs = classifier.preprocess.batch(frames[:64])
    difference = np.abs(classifier.logits_batch(frames[:64]) - model.logits(inputs))
    assert difference.max() < 1e-4


def test_int8_accuracy_bars(converted, held_out) -> None:
    """INT8 top-1 agrees with FP32 on >= 98% of held-out images and loses <= 1 point of accuracy."""
    frames, truth = held_out
    fp32 = _predictions(Classifier(converted("onnx", "fp32").path), frames)
    int8 = _predictions(Classifier(converted("onnx", "int8").path), frames)
    assert (int8 == fp32).mean() >= 0.98
    assert (fp32 == truth).mean() - (int8 == truth).mean() <= 0.01
    assert (fp32 == truth).mean() > 0.9  # the fixture model really learned the digits


@pytest.mark.parametrize("method", ["entropy", "percentile", "mse"])
def test_other_calibration_methods(converted, held_out, method: str) -> None:
    frames, _ = held_out
    fp32 = _predictions(Classifier(converted("onnx", "fp32").path), frames[:150])
    result = converted("onnx", "int8", calib_method=method)
    assert result.record.quantization["design"]["range_method"] == method
    assert result.record.calibration["method"] == method
    assert (_predictions(Classifier(result.path), frames[:150]) == fp32).mean() >= 0.98


def test_int8_is_qdq_per_channel(converted) -> None:
    result = converted("onnx", "int8")
    graph = onnx.load(str(result.path)).graph
    ops = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    initializers = {i.name: i for i in graph.initializer}
    weight_scales = [initializers[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and initializers.get(n.input[0]) is not None
                     and initializers[n.input[0]].data_type == onnx.TensorProto.INT8
                     and len(initializers[n.input[0]].dims) == 4]
    assert weight_scales and all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in weight_scales)
    assert (result.record.calibration["used"], result.record.calibration["held_out"]) == (150, 50)
    assert result.path.stat().st_size < converted("onnx", "fp32").path.stat().st_size / 3.5


def test_fp16_halves_the_size(converted) -> None:
    fp32, fp16 = converted("onnx", "fp32"), converted("onnx", "fp16")
    assert fp16.path.stat().st_size < fp32.path.stat().st_size * 0.55
    assert fp16.record.inputs[0].dtype == "float32"  # keep_io_types: callers feed float32


def test_dynamic_batch(converted, held_out) -> None:
    result = converted("onnx", "fp32", dynamic_batch=True)
    assert isinstance(result.record.inputs[0].shape[0], str)
    classifier = Classifier(result.path)
    assert classifier._backend.max_batch is None
    frames, _ = held_out
    np.testing.assert_allclose(classifier.logits_batch(frames[:5]),
                               np.stack([classifier.logits(f) for f in frames[:5]]), atol=1e-4)


def test_static_batch_is_the_default(converted) -> None:
    assert converted("onnx", "fp32").record.inputs[0].shape == [1, 3, 32, 32]


def test_record_embedded_in_onnx_metadata(converted) -> None:
    result = converted("onnx", "int8")
    metadata = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert result.record.to_json() == metadata["edgeres"]
    record = result.record
    assert record.source["sha256"] and record.source["checkpoint"] == "resnet18_digits.pt"
    assert record.quantization["kind"] == "static"
    assert record.verification["top1_agreement"] >= 0.9


def test_plain_onnx_runtime_shows_labels_and_preprocessing(converted) -> None:
    """What a tool that knows nothing of edgeres sees: ONNX Runtime's model metadata (Netron shows the same)."""
    import json

    import onnxruntime as ort

    path = converted("npu", "int8").path
    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
    record = Classifier(path).record
    assert meta.producer_name == "edgeres" and "resnet18 image classifier, 10 classes, int8" in meta.description
    assert json.loads(meta.custom_metadata_map["labels"]) == record.labels
    assert "centre crop 32" in meta.custom_metadata_map["preprocess"] and "RGB" in meta.description


def test_int8_without_calibration_is_refused(model, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="--int8 needs calibration images"):
        convert(model, ConvertOptions(precision="int8", out_dir=tmp_path, imgsz=32))


@pytest.mark.parametrize("options, message", [
    ({"target": "jetsonn"}, r"unknown target 'jetsonn'; choose a target \(onnx, npu, qnn, rknn, imx500, x86, rpi, jetson, mobile\)"),
    ({"precision": "int4"}, "precision must be one of fp32, fp16, int8"),
    ({"calib_method": "median"}, "--calib-method must be one of auto, minmax, mean-minmax"),
    ({"imgsz": 8}, "--imgsz must be between 32 and 1024"),
    ({"imgsz": 100000}, "--imgsz must be between 32 and 1024"),
    ({"opset": 12}, "--opset must be between 18 and"),
])
def test_bad_options(model, tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(EdgeresError, match=message):
        convert(model, ConvertOptions(out_dir=tmp_path, **{"imgsz": 32, **options}))


def test_failed_conversion_leaves_nothing(model, calib_dir: Path, tmp_path: Path, monkeypatch) -> None:
    def broken_quantizer(*args, **kwargs):
        raise RuntimeError("quantizer crashed")

    from edgeres.quantization import onnx_backend

    monkeypatch.setattr(onnx_backend, "quantize_static", broken_quantizer)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="quantizer crashed"):
        convert(model, ConvertOptions(precision="int8", calib=calib_dir, calib_size=8, out_dir=out, imgsz=32))
    assert visible(out) == []


def test_verification_failure_writes_nothing(model, calib_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """An export that does not reproduce PyTorch is an error, never a warning."""
    from edgeres.runtime.onnxruntime import OnnxRuntimeBackend

    real_run = OnnxRuntimeBackend.run
    monkeypatch.setattr(OnnxRuntimeBackend, "run", lambda self, batch: real_run(self, batch) + 0.01)
    with pytest.raises(VerificationError, match="FP32 logits differ from PyTorch"):
        convert(model, ConvertOptions(out_dir=tmp_path, imgsz=32))
    assert visible(tmp_path) == []


def visible(folder: Path) -> list[str]:
    """What a user sees in an output folder (the per-name lock files are hidden)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else []
