"""TensorRT backend for .engine files (TensorRT 10 API), for a Jetson or any NVIDIA GPU.

Named I/O tensors, `execute_async_v3` on a CUDA stream, and page-locked (pinned) host
buffers so the copies to and from the GPU are asynchronous DMA transfers. CUDA calls go
through NVIDIA's cuda-python bindings, which come with TensorRT's Python wheels and JetPack.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import ArtifactRecord
from ..errors import ArtifactError, BackendUnavailableError, DeviceError


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise BackendUnavailableError(
                "TensorRT engines need NVIDIA's CUDA Python bindings: pip install cuda-python "
                "(JetPack: sudo apt install python3-cuda or pip install cuda-python)"
            ) from None
    return cudart


def _check(result):
    """cuda-python returns (error, value...); raise on an error, return the value."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise DeviceError(f"CUDA call failed: {error}; is an NVIDIA GPU visible (nvidia-smi, tegrastats)?")
    return values[0] if len(values) == 1 else values


class TensorRtBackend:
    name: ClassVar[str] = "tensorrt"
    execution_precisions: ClassVar[tuple[str, ...]] = ()  # runs as built
    execution_precision = None

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        self._lock = threading.Lock()  # one execution context and one set of pinned buffers: one call at a time
        from ..engine import import_tensorrt

        trt = import_tensorrt()
        self._cudart = cudart = _cudart()
        if device not in (None, "GPU", "cuda:0"):
            raise DeviceError(f"a TensorRT engine runs on the GPU it was built for; device {device!r} is not one")
        logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise ArtifactError(f"{Path(path).name} is not an engine this TensorRT ({trt.__version__}) and GPU can "
                                "load; engines are built on the device that runs them: edgeres build-engine")
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{Path(path).name} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1")
        self._input, self._output = (self._buffers(trt, name) for name in (inputs[0], outputs[0]))

    def _buffers(self, trt, name: str) -> dict:
        """A pinned host array and a device buffer of the tensor's size, bound to the context."""
        shape = tuple(self._engine.get_tensor_shape(name))
        dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(name)))
        nbytes = int(np.prod(shape)) * dtype.itemsize
        host_pointer = _check(self._cudart.cudaMallocHost(nbytes))
        host = np.ctypeslib.as_array(ctypes.cast(host_pointer, ctypes.POINTER(ctypes.c_byte)), (nbytes,))
        device = _check(self._cudart.cudaMalloc(nbytes))
        self._context.set_tensor_address(name, int(device))
        return {"name": name, "host": host.view(dtype).reshape(shape), "device": device, "nbytes": nbytes,
                "pointers": (host_pointer, device)}

    def embedded_record(self) -> ArtifactRecord | None:
        return None  # the record is in the sidecar: a header inside the .engine would break trtexec and DeepStream

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        return None

    @property
    def max_batch(self) -> int | None:
        return self._input["host"].shape[0]

    def run(self, batch: np.ndarray) -> np.ndarray:
        cudart, stream = self._cudart, self._stream
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            return np.stack(self._run_locked(batch, cudart, stream, to_device, to_host))

    def _run_locked(self, batch: np.ndarray, cudart, stream, to_device, to_host) -> list[np.ndarray]:
        rows = []
        for item in batch:
            self._input["host"][0] = item
            _check(cudart.cudaMemcpyAsync(self._input["device"], self._input["pointers"][0], self._input["nbytes"],
                                          to_device, stream))
            if not self._context.execute_async_v3(stream_handle=int(stream)):
                raise DeviceError("TensorRT failed to run the engine")
            _check(cudart.cudaMemcpyAsync(self._output["pointers"][0], self._output["device"], self._output["nbytes"],
                                          to_host, stream))
            _check(cudart.cudaStreamSynchronize(stream))
            rows.append(self._output["host"][0].astype(np.float32))
        return rows

    def __del__(self) -> None:
        cudart = getattr(self, "_cudart", None)
        for buffer in (getattr(self, "_input", None), getattr(self, "_output", None)):
            if cudart is not None and isinstance(buffer, dict):
                cudart.cudaFreeHost(buffer["pointers"][0])
                cudart.cudaFree(buffer["device"])
