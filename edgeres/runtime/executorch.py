"""ExecuTorch backend for .pte artifacts, through ExecuTorch's Python runtime.

On a phone the app loads the .pte with ExecuTorch's C++, Java or Swift runtime; this
backend runs the same program here (and in `edgeres verify`/`eval`) with the same kernels.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import PTE_RECORD_MARKER, PTE_RECORD_METHOD, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError


class ExecuTorchBackend:
    name: ClassVar[str] = "executorch"

    def __init__(self, path: Path, threads: int | None, device: str | None = None) -> None:
        self._lock = threading.Lock()  # a loaded method holds its own input and output buffers: one call at a time
        try:
            import torch
            from executorch.runtime import Runtime
        except ImportError:
            raise BackendUnavailableError(".pte artifacts need ExecuTorch's runtime: pip install 'edgeres[mobile]'") from None
        if device not in (None, "CPU"):
            raise DeviceError(f"ExecuTorch's Python runtime runs on the CPU; device {device!r} is not available")
        self._torch = torch
        try:
            self._program = Runtime.get().load_program(str(path))
            self._method = self._program.load_method("forward")
        except Exception as error:  # the runtime raises its own untyped errors for a bad file
            raise ArtifactError(f"{path} is not a loadable ExecuTorch program: {error}") from None
        self._path = path

    def embedded_record(self) -> ArtifactRecord | None:
        """The record its constant method returns (.pte files from before it existed have none)."""
        if PTE_RECORD_METHOD not in self._program.method_names:
            return None
        text = self._program.load_method(PTE_RECORD_METHOD).execute([])[0]
        if not isinstance(text, str) or text.startswith(PTE_RECORD_MARKER):
            return None  # never filled: a conversion that stopped before its record was written
        return parse_embedded(text, self._path)

    @property
    def max_batch(self) -> int | None:
        return 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        rows = []
        for item in batch:
            with self._lock:
                output = self._method.execute([self._torch.from_numpy(np.ascontiguousarray(item[None]))])[0]
                rows.append(output.numpy().copy())  # the method reuses its output buffer
        return np.concatenate(rows).astype(np.float32, copy=False)
