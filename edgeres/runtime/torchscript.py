"""Lite interpreter backend for TorchScript Lite .ptl artifacts (needs torch).

Phones load a .ptl with PyTorch Mobile's lite interpreter (org.pytorch:pytorch_android_lite,
LibTorch-Lite); this is the same interpreter in desktop torch.
"""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import LITE_RECORD_FILE, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError
from ..files import MODEL_LIMIT, RECORD_LIMIT, check_inflated_size, checked, read_zip_member


class LiteInterpreterBackend:
    name: ClassVar[str] = "torchscript-lite"
    execution_precisions: ClassVar[tuple[str, ...]] = ()  # runs as built
    execution_precision = None

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        self._lock = threading.Lock()  # the lite interpreter is not documented as reentrant: one call at a time
        try:
            import torch
            from torch.jit.mobile import _load_for_lite_interpreter
        except ImportError:
            raise BackendUnavailableError(".ptl artifacts need PyTorch's lite interpreter: pip install torch") from None
        if device not in (None, "CPU"):
            raise DeviceError(f"the lite interpreter runs on the CPU; device {device!r} is not available")
        if "qnnpack" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "qnnpack"  # INT8 .ptl are made for QNNPACK, as on a phone
        if threads:
            torch.set_num_threads(threads)
        self._torch = torch
        check_inflated_size(path, MODEL_LIMIT, "TorchScript Lite model")
        try:
            self._module = _load_for_lite_interpreter(str(path))
        except Exception as error:  # torch raises its own untyped errors for a bad file
            raise ArtifactError(f"{path} is not a TorchScript Lite model: {str(error).splitlines()[0]}") from None
        self._path = path

    def embedded_record(self) -> ArtifactRecord | None:
        return self.read_record(self._path)

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        """The record in the archive's extra files (where PyTorch Mobile's loaders read extra files)."""
        checked(path, MODEL_LIMIT, "TorchScript Lite model")
        if not zipfile.is_zipfile(path):
            return None  # a flatbuffer-format lite model: the sidecar carries the record
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"/extra/{LITE_RECORD_FILE}")), None)
            if name is None:
                return None
            data = read_zip_member(archive, name, RECORD_LIMIT, f"the record inside {path.name}")
        try:
            return parse_embedded(data.decode("utf-8"), path)
        except UnicodeDecodeError:
            raise ArtifactError(f"the edgeres record inside {path} is not UTF-8 text; convert again") from None

    @property
    def max_batch(self) -> int | None:
        return 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock, self._torch.no_grad():
            rows = [self._module(self._torch.from_numpy(np.ascontiguousarray(item[None]))) for item in batch]
        return np.concatenate([row.numpy() for row in rows]).astype(np.float32, copy=False)
