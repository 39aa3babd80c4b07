"""The TensorRT engine builder: what can be checked without an NVIDIA GPU.

TensorRT needs one, and this machine has none: the real build and the TensorRT backend
were not run here. What is tested: the clear error without TensorRT, the input checks, and
the builder's use of the TensorRT API (flags from the record, DLA, workspace, timing cache,
sidecar) against a recording stand-in for the `tensorrt` module.
"""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

import pytest

from edgeres.artifact import read_sidecar
from edgeres.engine import build_engine, builder_flags, engine_path_for
from edgeres.errors import ArtifactError, BackendUnavailableError
from edgeres.runtime.classifier import Classifier
from tests.conftest import assert_one_red_line, run_cli

pytestmark = pytest.mark.slow


def test_without_tensorrt_it_says_what_to_install(monkeypatch, capsys, converted, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, _, err = run_cli(monkeypatch, capsys, "build-engine", converted("jetson", "int8").path)
    assert_one_red_line(code, err, "TensorRT is not installed here. On a Jetson it comes with JetPack")
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        Classifier(converted("jetson", "fp16").path, tensorrt_engine=True)
    (tmp_path / "model.engine").write_bytes(b"\0" * 16)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not installed"):
        Classifier(tmp_path / "model.engine")


def test_only_jetson_onnx_artifacts(converted, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="made for target onnx; convert with --target jetson"):
        build_engine(converted("onnx", "fp32").path)
    with pytest.raises(ArtifactError, match="does not exist"):
        build_engine(tmp_path / "missing.onnx")
    with pytest.raises(ArtifactError, match="not an ONNX file"):
        build_engine(converted("x86", "int8").path)


def test_builder_flags_follow_the_record(converted) -> None:
    flags = {p: builder_flags(converted("jetson", p).record) for p in ("fp32", "fp16", "int8")}
    assert flags == {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}


class _Recorder(types.SimpleNamespace):
    def __getattr__(self, name):  # any attribute is a recording callable
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self
        return call


def fake_tensorrt(calls: list) -> types.ModuleType:
    """Records the builder calls edgeres makes; `build_serialized_network` returns fixed bytes."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
    trt.DeviceType = types.SimpleNamespace(DLA="DLA")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    config = _Recorder(calls=calls)
    config.serialize = lambda: b"timing"
    builder = _Recorder(calls=calls)
    builder.create_builder_config = lambda: config
    builder.build_serialized_network = lambda network, cfg: b"ENGINE"
    trt.Builder = lambda logger: builder
    parser = types.SimpleNamespace(parse_from_file=lambda path: calls.append(("parse", path)) or True, num_errors=0)
    trt.OnnxParser = lambda network, logger: parser
    trt.config = config
    return trt


def test_builder_uses_the_tensorrt_api_as_documented(monkeypatch, converted, tmp_path: Path) -> None:
    calls: list = []
    trt = fake_tensorrt(calls)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    source = converted("jetson", "int8").path
    onnx_path = tmp_path / source.name
    for path in source.parent.glob(source.stem + ".*"):
        shutil.copy(path, tmp_path / path.name)
    engine = build_engine(onnx_path, workspace_mb=512, dla_core=1, timing_cache=tmp_path / "t.cache", log=lambda m: 0)
    assert engine == engine_path_for(onnx_path) and engine.read_bytes() == b"ENGINE"
    assert (tmp_path / "t.cache").read_bytes() == b"timing"
    names = [(name, args) for name, args, _ in (c for c in calls if len(c) == 3)]
    assert ("set_memory_pool_limit", ("WORKSPACE", 512 << 20)) in names
    assert [args for name, args in names if name == "set_flag"] == [("INT8",), ("FP16",), ("GPU_FALLBACK",)]
    assert trt.config.DLA_core == 1 and trt.config.default_device_type == "DLA"
    assert ("parse", str(onnx_path)) in calls
    record = read_sidecar(engine)
    assert record.format == "tensorrt" and record.quantization["engine"]["flags"] == ["INT8", "FP16"]
    assert record.quantization["engine"]["onnx"] == onnx_path.name and record.labels
    assert read_sidecar(onnx_path).format == "onnx"  # the ONNX keeps its own sidecar
