"""ONNX Runtime backend for .onnx artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import METADATA_KEY, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError

try:
    import onnxruntime as ort
except ImportError:  # the runtime is an extra: say how to get it when it is used
    ort = None


class OnnxRuntimeBackend:
    name: ClassVar[str] = "onnxruntime"

    def __init__(self, path: Path, threads: int | None, device: str | None = None) -> None:
        if ort is None:
            raise BackendUnavailableError("ONNX artifacts need ONNX Runtime: pip install 'edgeres[onnx]'")
        if device not in (None, "CPU"):
            raise DeviceError(f"the ONNX Runtime backend runs on CPU here; device {device!r} is not available")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        # Between two inferences the Classifier preprocesses a frame in Python; worker
        # threads that spin-wait meanwhile take the cores it needs (measured: 15.0 vs
        # 11.1 ms per predict on 2 cores, tools/benchmark_cpu.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for a bad file
            raise ArtifactError(f"{path} is not a valid ONNX model: {str(error).strip()}") from None
        self._path = path
        model_input = self._session.get_inputs()[0]
        self._input_name = model_input.name
        batch = model_input.shape[0]
        self._max_batch = batch if isinstance(batch, int) else None

    def embedded_record(self) -> ArtifactRecord | None:
        text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        return None if text is None else parse_embedded(text, self._path)

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input_name: batch})[0].astype(np.float32, copy=False)
