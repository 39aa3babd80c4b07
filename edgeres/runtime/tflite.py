"""TFLite/LiteRT backend for .tflite artifacts: ai-edge-litert, or tflite-runtime on older Pi OS."""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import METADATA_KEY, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError, install_hint
from ..files import MODEL_LIMIT, read_bytes
from ..logs import native_output_silenced

try:
    from ai_edge_litert.interpreter import Interpreter

    RUNTIME = "ai-edge-litert"
except ImportError:  # older Raspberry Pi OS images ship tflite-runtime only
    try:
        from tflite_runtime.interpreter import Interpreter

        RUNTIME = "tflite-runtime"
    except ImportError:
        Interpreter = None
        RUNTIME = None


@dataclass(frozen=True)
class IoDetails:
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    input_scale: float | None
    input_zero_point: int | None
    output_name: str
    output_shape: tuple[int, ...]
    output_dtype: str


def interpreter(model: Path | bytes, threads: int | None = None):
    if Interpreter is None:
        raise BackendUnavailableError(
            f"TFLite artifacts need LiteRT (or tflite-runtime on older Pi OS): {install_hint('rpi')}")
    threads = threads or os.cpu_count()
    try:
        with native_output_silenced():  # "INFO: Created TensorFlow Lite XNNPACK delegate" on every load
            if isinstance(model, bytes):
                loaded = Interpreter(model_content=model, num_threads=threads)
            else:
                loaded = Interpreter(model_path=str(model), num_threads=threads)
            loaded.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ArtifactError(f"not a valid TFLite model: {str(error).strip().splitlines()[0]}") from None
    return loaded


def io_details(model: Path | bytes | object) -> IoDetails:
    loaded = model if hasattr(model, "get_input_details") else interpreter(model, 1)
    inputs, outputs = loaded.get_input_details(), loaded.get_output_details()
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 4 or len(outputs[0]["shape"]) != 2:
        raise ArtifactError(
            "not an image classifier: expected 1 input of rank 4 and 1 output of rank 2, found "
            f"inputs {[list(i['shape']) for i in inputs]} and outputs {[list(o['shape']) for o in outputs]}"
        )
    (source, target) = inputs[0], outputs[0]
    scale, zero_point = source["quantization"]
    integer = np.dtype(source["dtype"]).kind in "iu"
    return IoDetails(
        input_name=source["name"], input_shape=tuple(int(d) for d in source["shape"]),
        input_dtype=np.dtype(source["dtype"]).name, input_scale=float(scale) if integer else None,
        input_zero_point=int(zero_point) if integer else None, output_name=target["name"],
        output_shape=tuple(int(d) for d in target["shape"]), output_dtype=np.dtype(target["dtype"]).name,
    )


def read_metadata(model_bytes: bytes, name: str = METADATA_KEY) -> str | None:
    """A text metadata entry of a TFLite flatbuffer, or None.

    Read by hand, after TFLite's schema (Model: buffers = field 4, metadata = field 6;
    Metadata: name, buffer; Buffer: data), so that it needs no runtime: tflite-runtime has
    no schema module, and `edgeres info` may run where no TFLite runtime is installed.
    """
    if model_bytes[4:8] != b"TFL3":  # the file identifier of every TFLite flatbuffer
        return None
    try:
        model = _root_table(model_bytes)
        buffers = _vector(model_bytes, model, 4)
        for entry in _vector(model_bytes, model, 6):
            if _bytes(model_bytes, entry, 0) == name.encode():
                buffer = buffers[_scalar(model_bytes, entry, 1, "<I")]
                return _bytes(model_bytes, buffer, 0).decode() or None  # empty: stored outside (> 2 GB models)
    except (IndexError, ValueError, UnicodeDecodeError, struct.error):  # not a flatbuffer we can read
        return None
    return None


def _root_table(data: bytes) -> int:
    return struct.unpack_from("<I", data, 0)[0]


def _field(data: bytes, table: int, index: int) -> int | None:
    """Where field `index` of the table at `table` is stored, or None when it is absent."""
    vtable = table - struct.unpack_from("<i", data, table)[0]
    vtable_size = struct.unpack_from("<H", data, vtable)[0]
    if 4 + 2 * index >= vtable_size:
        return None
    offset = struct.unpack_from("<H", data, vtable + 4 + 2 * index)[0]
    return table + offset if offset else None


def _scalar(data: bytes, table: int, index: int, fmt: str):
    where = _field(data, table, index)
    return 0 if where is None else struct.unpack_from(fmt, data, where)[0]


def _vector_span(data: bytes, table: int, index: int) -> tuple[int, int]:
    where = _field(data, table, index)
    if where is None:
        return 0, 0
    start = where + struct.unpack_from("<I", data, where)[0]
    return start + 4, struct.unpack_from("<I", data, start)[0]


def _vector(data: bytes, table: int, index: int) -> list[int]:
    """The tables a vector of tables points at."""
    start, length = _vector_span(data, table, index)
    return [start + 4 * i + struct.unpack_from("<I", data, start + 4 * i)[0] for i in range(length)]


def _bytes(data: bytes, table: int, index: int) -> bytes:
    """A [ubyte] or string field (the same layout: a length, then the bytes); empty when absent."""
    start, length = _vector_span(data, table, index)
    return data[start:start + length]


def xnnpack_coverage(model: Path | bytes) -> dict:
    """How many of the model's ops run inside the XNNPACK delegate, and which do not.

    An op left outside runs on TFLite's reference kernels, which is what makes a model
    slow on a Pi. Found from the graph: ops whose outputs reach a delegate's or the
    model's inputs without coming out of a delegate ran outside it.
    """
    loaded = interpreter(model, 1)
    ops = loaded._get_ops_details()  # the public API has no per-op delegation status
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    plain = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegate_out = {int(t) for op in delegates for t in op["outputs"]}
    producers = {int(t): op for op in plain for t in op["outputs"]}
    pending = [int(t) for op in delegates for t in op["inputs"]]
    pending += [int(d["index"]) for d in loaded.get_output_details()]
    outside: dict[int, str] = {}
    while pending:
        tensor = pending.pop()
        op = producers.get(tensor)
        if op is None or tensor in delegate_out or op["index"] in outside:
            continue
        outside[op["index"]] = op["op_name"]
        pending.extend(int(t) for t in op["inputs"])
    return {"ops": len(plain), "delegated": len(plain) - len(outside), "outside": sorted(set(outside.values()))}


class TfliteBackend:
    name: ClassVar[str] = "tflite"
    execution_precisions: ClassVar[tuple[str, ...]] = ()  # runs as built
    execution_precision = None

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        if device not in (None, "CPU"):
            raise DeviceError(f"the TFLite backend runs on the CPU (XNNPACK); device {device!r} is not available")
        self._path = path
        try:
            self._interpreter = interpreter(path, threads)
        except ArtifactError as error:
            raise ArtifactError(f"{path}: {error}") from None
        details = io_details(self._interpreter)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._max_batch = details.input_shape[0]
        self.name = f"tflite ({RUNTIME})"
        # An interpreter holds one set of input and output tensors: set, invoke and read
        # must not interleave across threads, so they run under one lock (XNNPACK already
        # uses every thread it was given inside each invoke).
        self._lock = threading.Lock()

    def embedded_record(self) -> ArtifactRecord | None:
        return self.read_record(self._path)

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        text = read_metadata(read_bytes(path, MODEL_LIMIT, "TFLite model"))
        return None if text is None else parse_embedded(text, path)

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = self._quantize(batch)
        rows = []
        for item in batch:  # the graph has batch 1
            with self._lock:
                self._interpreter.set_tensor(self._input["index"], item[None])
                self._interpreter.invoke()
                output = self._interpreter.get_tensor(self._output["index"])  # a copy
            rows.append(self._dequantize(output))
        return np.concatenate(rows)

    def _quantize(self, batch: np.ndarray) -> np.ndarray:
        """Float inputs to an integer model are quantized with the model's own parameters."""
        dtype = np.dtype(self._input["dtype"])
        if dtype.kind not in "iu" or batch.dtype == dtype:
            return batch.astype(dtype, copy=False)
        scale, zero_point = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(dtype)

    def _dequantize(self, output: np.ndarray) -> np.ndarray:
        scale, zero_point = self._output["quantization"]
        if output.dtype.kind in "iu" and scale:
            return (output.astype(np.float32) - zero_point) * scale
        return output.astype(np.float32, copy=False)
