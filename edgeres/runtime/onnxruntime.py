"""ONNX Runtime backend for .onnx artifacts."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import METADATA_KEY, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError, install_hint
from ..files import MODEL_LIMIT, read_bytes
from ..cpu import cpu_flags as _cpu_flags
from .base import cache_root

try:
    import onnxruntime as ort
except ImportError:  # the runtime is an extra: say how to get it when it is used
    ort = None


# device name -> ONNX Runtime execution providers, fastest first; CPU always last as fallback.
DEVICES = {
    "TensorRT": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
    "CUDA": ["CUDAExecutionProvider"],
    "CPU": [],
}


def providers_for(device: str | None, available: list[str]) -> list[str]:
    """Execution providers for `device`; by default TensorRT, then CUDA, when this ONNX Runtime has them (a Jetson)."""
    if device is None:
        chosen = next((name for name in ("TensorRT", "CUDA") if DEVICES[name][0] in available), "CPU")
        return [*DEVICES[chosen], "CPUExecutionProvider"]
    if device not in DEVICES:
        raise DeviceError(f"unknown ONNX Runtime device {device!r}; choose one of {', '.join(DEVICES)}")
    missing = [name for name in DEVICES[device] if name not in available]
    if missing:
        raise DeviceError(
            f"device {device} needs {', '.join(missing)}, which this ONNX Runtime lacks (it has "
            f"{', '.join(available)}); on a Jetson install NVIDIA's onnxruntime-gpu wheel for your JetPack"
        )
    return [*DEVICES[device], "CPUExecutionProvider"]


class OnnxRuntimeBackend:
    name: ClassVar[str] = "onnxruntime"
    execution_precisions: ClassVar[tuple[str, ...]] = ()  # runs as built
    execution_precision = None

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        if ort is None:
            raise BackendUnavailableError(f"ONNX artifacts need ONNX Runtime: {install_hint('onnx')}")
        providers = providers_for(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        # Between two inferences the Classifier preprocesses a frame in Python; worker
        # threads that spin-wait meanwhile take the cores it needs (measured: 15.0 vs
        # 11.1 ms per predict on 2 cores, tools/benchmark_cpu.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if int8_kernels_saturate():
            # Fused int8 kernels on x86 without VNNI sum u8 x s8 pairs in int16 (vpmaddubsw),
            # which saturates: a hard ResNet50's INT8 agreement fell from 94.2% to 90.3%.
            # Unfused, each Q/DQ pair runs exactly as quantized, as an NPU or TensorRT runs it.
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=_with_options(providers, path))
        except Exception as error:  # onnxruntime raises its own untyped errors for a bad file
            raise ArtifactError(f"{path} is not a valid ONNX model: {str(error).strip()}") from None
        self._path = path
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        batch = model_input.shape[0]
        self._max_batch = batch if isinstance(batch, int) else None

    @property
    def providers(self) -> list[str]:
        return self._session.get_providers()

    def embedded_record(self) -> ArtifactRecord | None:
        text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        return None if text is None else parse_embedded(text, self._path)

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        try:
            text = _metadata_props(read_bytes(path, MODEL_LIMIT, "ONNX model")).get(METADATA_KEY)
        except (IndexError, ValueError, UnicodeDecodeError):  # not a ModelProto
            return None
        return None if text is None else parse_embedded(text, path)

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is thread-safe (ONNX Runtime's documented contract): no lock
        return self._session.run(None, {self._input_name: batch})[0].astype(np.float32, copy=False)


def _metadata_props(data: bytes) -> dict[str, str]:
    """ModelProto.metadata_props (field 14: key 1, value 2), read from the protobuf wire format
    by hand: the other top-level fields, the graph with its weights among them, are skipped."""
    props = {}
    for number, value in _fields(memoryview(data)):  # views: the weights are not copied
        if number == 14:
            entry = dict(_fields(_length_delimited(value)))
            props[_text(entry.get(1, EMPTY))] = _text(entry.get(2, EMPTY))
    return props


def _length_delimited(value) -> memoryview:
    if not isinstance(value, memoryview):  # a varint where ONNX has a message or a string
        raise ValueError("not a length-delimited field")
    return value


def _text(value) -> str:
    return bytes(_length_delimited(value)).decode()


EMPTY = memoryview(b"")  # an absent string field


def _fields(data: memoryview):
    """(field number, value) of one protobuf message; length-delimited values as views of `data`."""
    position = 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, position = _varint(data, position)
        elif wire_type == 2:
            length, position = _varint(data, position)
            if position + length > len(data):
                raise ValueError("truncated field")
            value, position = data[position:position + length], position + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, position = data[position:position + size], position + size
        else:
            raise ValueError(f"wire type {wire_type} is not in ONNX's messages")
        yield number, value


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):  # at most 10 bytes in protobuf
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if byte < 0x80:
            return value, position
    raise ValueError("a varint longer than 10 bytes")


def int8_kernels_saturate(cpu_flags: set[str] | None = None) -> bool:
    """Whether ONNX Runtime's fused x86 int8 kernels can saturate here (AVX2 without any VNNI)."""
    if cpu_flags is None:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            return False  # ARM's dot-product and widening kernels accumulate in int32
        cpu_flags = _cpu_flags() or {"avx_vnni"}  # not Linux: assume a current CPU rather than slow every model down
    return not cpu_flags & {"avx512_vnni", "avx_vnni", "amx_int8"}


def _with_options(providers: list[str], path: Path) -> list:
    """TensorRT's engine cache lives in edgeres' cache folder, so the second start is fast."""
    if "TensorrtExecutionProvider" not in providers:
        return providers
    cache = cache_root() / "tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache), "trt_fp16_enable": True}
    return [(name, options) if name == "TensorrtExecutionProvider" else name for name in providers]
