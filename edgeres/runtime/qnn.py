"""Qualcomm's Hexagon NPU (QNN HTP) through ONNX Runtime's QNN execution provider, for QNN context models.

A QNN context model is an ONNX file whose graph is EPContext nodes holding the binary that
QNN compiled for one SoC (`edgeres convert --target qnn` writes one). Only the QNN execution
provider runs it, so it is opened here with CPU fallback disabled: what runs is what the
NPU runs. On a Snapdragon device (Windows or Linux on ARM64) `onnxruntime-qnn` drives the
real HTP; its Linux x86-64 wheel carries the HTP emulator instead, which is how edgeres
checks these artifacts on a PC.
"""

from __future__ import annotations

import platform
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import ArtifactRecord
from ..errors import ArtifactError, BackendUnavailableError, DeviceError, install_hint
from ..files import MODEL_LIMIT, read_bytes
from ..logs import native_output_silenced
from .onnxruntime import EMPTY, OnnxRuntimeBackend, _fields, _length_delimited, _text, ort

EP_NAME = "QNNExecutionProvider"
CONTEXT_OP = "EPContext"
QNN_SOURCES = ("QNN", "QNNExecutionProvider")  # what ONNX Runtime's QNN EP writes as an EPContext's source


def is_context_model(path: Path) -> bool:
    """Whether the ONNX at `path` is a QNN context model (EPContext nodes whose source is QNN)."""
    data = read_bytes(path, MODEL_LIMIT, "ONNX model")
    if CONTEXT_OP.encode() not in data:  # most ONNX files: one fast search, no walk through their fields
        return False
    try:
        return any(source in QNN_SOURCES for source in _context_sources(data))
    except (IndexError, ValueError, UnicodeDecodeError):  # not a ModelProto: the ONNX backend says so
        return False


def _context_sources(data: bytes) -> list[str]:
    """The `source` of every EPContext node of the main graph, read from the wire format (ModelProto.graph 7,
    GraphProto.node 1, NodeProto.op_type 4, attribute 5 and domain 7, AttributeProto.name 1 and s 4), so choosing the
    runtime for a file needs neither onnx nor a copy of its weights."""
    sources = []
    for number, value in _fields(memoryview(data)):
        if number != 7:
            continue
        for graph_field, node in _fields(_length_delimited(value)):
            if graph_field != 1:
                continue
            fields = list(_fields(_length_delimited(node)))
            if (any(n == 4 and _text(v) == CONTEXT_OP for n, v in fields)
                    and any(n == 7 and _text(v) == "com.microsoft" for n, v in fields)):  # the op's own domain
                for attribute in (dict(_fields(_length_delimited(v))) for n, v in fields if n == 5):
                    if _text(attribute.get(1, EMPTY)) == "source":
                        sources.append(_text(attribute.get(4, EMPTY)))
    return sources


def qnn_module():
    try:
        import onnxruntime_qnn
    except ImportError:
        raise BackendUnavailableError(f"QNN context models need onnxruntime-qnn: {install_hint('qnn')}") from None
    return onnxruntime_qnn


def htp_devices() -> list:
    """ONNX Runtime's devices for the QNN execution provider (registered once per process)."""
    if ort is None:
        raise BackendUnavailableError(f"QNN context models need ONNX Runtime: {install_hint('qnn')}")
    _register(qnn_module().get_library_path())
    devices = [device for device in ort.get_ep_devices() if device.ep_name == EP_NAME]
    if not devices:
        raise DeviceError("onnxruntime-qnn is installed but offers no QNN device here")
    return devices


_registering = threading.Lock()  # two Classifiers opening at once must not register the library twice


def _register(library: str) -> None:
    """QNN's execution provider library, registered with ONNX Runtime once per process."""
    with _registering:
        if EP_NAME in {device.ep_name for device in ort.get_ep_devices()}:
            return  # registered already, by edgeres or by the application
        try:
            ort.register_execution_provider_library(EP_NAME, library)
        except Exception as error:  # ONNX Runtime's own untyped errors
            raise BackendUnavailableError(
                f"onnxruntime-qnn is installed but its QNN library did not load ({str(error).strip()}); it needs "
                "the ONNX Runtime it was built for (pip install -U onnxruntime onnxruntime-qnn) and, on Linux, "
                "glibc 2.35 or newer") from None


def htp_session(model: Path | bytes, provider_options: dict[str, str] | None = None,
                session_entries: dict[str, str] | None = None, threads: int | None = None):
    """An InferenceSession on the HTP backend, every node on it (CPU fallback disabled)."""
    devices = htp_devices()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    for key, value in (session_entries or {}).items():
        options.add_session_config_entry(key, value)
    options.add_provider_for_devices(devices[:1], {"backend_path": qnn_module().get_qnn_htp_path(),
                                                   **(provider_options or {})})
    source = model if isinstance(model, bytes) else str(model)
    with native_output_silenced():  # QNN's libraries print their configuration on every load (--verbose shows it)
        return ort.InferenceSession(source, options)


def where_it_runs() -> str:
    """The HTP of this Snapdragon, or the emulator that onnxruntime-qnn's x86-64 wheel carries."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        return "QNN HTP emulator on x86-64, not the chip"
    return "QNN HTP"


class QnnBackend(OnnxRuntimeBackend):
    """A QNN context model on the HTP (or its emulator), nothing falling back to the CPU."""

    # said wherever a timing or a result is reported: on a PC the emulator's seconds are not the chip's
    name: ClassVar[str] = f"onnxruntime-qnn ({where_it_runs()})"

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        if device not in (None, "NPU"):
            raise DeviceError(f"{path.name} is a QNN context model: it runs on the NPU only (device NPU)")
        htp_devices()  # a missing or broken onnxruntime-qnn says so itself, not as a bad artifact
        try:
            self._session = htp_session(path, threads=threads)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise ArtifactError(f"{path.name}: QNN could not load this context model ({str(error).strip()}); it "
                                "was compiled for one SoC and QNN version: convert again for this device") from None
        self._path = path
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        self._max_batch = 1


    def run(self, batch: np.ndarray) -> np.ndarray:
        # a context binary is compiled for batch 1: larger batches go through one by one
        rows = [self._session.run(None, {self._input_name: batch[i:i + 1]})[0] for i in range(len(batch))]
        return np.concatenate(rows).astype(np.float32, copy=False)

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        return OnnxRuntimeBackend.read_record(path)
