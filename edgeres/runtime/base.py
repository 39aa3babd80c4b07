"""What every runtime backend implements."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Iterable, Iterator, Protocol

import numpy as np

from ..artifact import ArtifactRecord


# The float arithmetic a runtime can be asked to run an artifact's float layers in. "fp32" is what
# every conversion verifies and what every artifact runs in unless a faster mode is asked for.
PRECISION_MODES = ("fp32", "bf16", "fp16")


class Backend(Protocol):
    """Runs preprocessed inputs through one kind of artifact.

    A backend imports its runtime package inside its own module only, and raises
    BackendUnavailableError (saying what to install) when that package is missing.
    """

    name: ClassVar[str]
    # The PRECISION_MODES it can compile for, its default first; () where the artifact alone decides
    # (open_backend refuses a precision for those).
    execution_precisions: ClassVar[tuple[str, ...]]

    def __init__(self, path: Path, threads: int | None, device: str | None, precision: str | None = None) -> None:
        """Load and compile; `device` None means the backend's best default, else a name it lists;
        `precision` None means its default mode, else one of execution_precisions the device has."""

    @property
    def execution_precision(self) -> str | None:
        """The mode it runs in, as the runtime reports it after compiling (None: no modes)."""

    def embedded_record(self) -> ArtifactRecord | None:
        """The edgeres record stored inside the artifact, if the format has one."""

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        """The same record read from the file without the runtime (`edgeres info` on a machine
        without it), or None where the format keeps none."""

    @property
    def max_batch(self) -> int | None:
        """Largest batch one call accepts (None: any)."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Model inputs (N, ...) in the artifact's layout and dtype -> float32 logits (N, classes)."""


class StreamingBackend(Backend, Protocol):
    """A backend that keeps several inferences in flight (for video)."""

    def stream(self, inputs: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Logits (classes,) for each input (no batch axis), in input order."""


# Compiled models (OpenVINO, TensorRT) are cached here, so the second start of an artifact is fast.
CACHE_ENV = "EDGERES_CACHE_DIR"


def on_a_linux_pc() -> bool:
    """Linux on x86-64: where the vendors' PC simulators run (rknn-toolkit2's, Sony's MCT)."""
    import platform
    import sys

    return sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "edgeres")


def cpus_here() -> int:
    return os.cpu_count() or 1


def check_threads(threads: int | None) -> None:
    """Threads a runtime may be given: 1 up to the CPUs present. More only slows it down, and a huge
    count goes straight into a runtime's thread pool, which can take every process id there is."""
    from ..errors import EdgeresError

    if threads is not None and not 1 <= threads <= cpus_here():
        raise EdgeresError(f"threads must be between 1 and {cpus_here()} (the CPUs here), got {threads}")
