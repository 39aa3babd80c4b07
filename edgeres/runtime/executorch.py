"""ExecuTorch backend for .pte artifacts, through ExecuTorch's Python runtime.

On a phone the app loads the .pte with ExecuTorch's C++, Java or Swift runtime; this
backend runs the same program here (and in `edgeres verify`/`eval`) with the same kernels.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import PTE_RECORD_MARKER, PTE_RECORD_METHOD, ArtifactRecord, parse_embedded
from ..errors import ArtifactError, BackendUnavailableError, DeviceError, install_hint
from ..files import MODEL_LIMIT, open_checked, read_bytes
from ..logs import quiet


PTE_JSON_START = b'{"arch":'  # the record's first key (ArtifactRecord's first field), as compact_json writes it
PTE_IDENTIFIER = re.compile(rb"ET\d\d")  # the flatbuffer's file identifier at bytes 4-8: ET12 for this ExecuTorch
# The native loader, as Runtime.load_program calls it: executorch.runtime's Python wrapper imports the
# exporter (exir) first, which made each probe take 20-40 s instead of 5; the public API where it moves.
PROBE_CODE = """
import sys
try:
    import torch
    from executorch.extension.pybindings import _C
    program = _C._load_program(sys.argv[1], enable_etdump=False, debug_buffer_size=0, data_path=None,
                               program_verification=_C.Verification.InternalConsistency)
except ImportError:
    from executorch.runtime import Runtime
    program = Runtime.get().load_program(sys.argv[1])
program.load_method("forward")
"""
_probed: dict[tuple, None] = {}  # files a child process loaded without crashing, by identity and change time


def probe_load(path: Path) -> None:
    """Load the program in a child process first: ExecuTorch's loader aborts the whole process (a C++
    exception through C) on some malformed files, which no try/except here could catch."""
    with open_checked(path, MODEL_LIMIT, "ExecuTorch program") as stream:
        head = stream.read(8)
        info = os.fstat(stream.fileno())
    if len(head) < 8 or not PTE_IDENTIFIER.fullmatch(head[4:8]):
        raise ArtifactError(f"{path} is not an ExecuTorch program: its header lacks the ExecuTorch identifier "
                            "(ET12); the file is damaged or of another kind")
    key = (os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns)
    if key in _probed:
        return
    try:
        done = subprocess.run([sys.executable, "-c", PROBE_CODE, str(path)], capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ArtifactError(f"{path}: ExecuTorch did not finish loading it in 10 minutes; the file is damaged") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "cpuinfo" not in line]
        how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
        raise ArtifactError(f"{path} is not a loadable ExecuTorch program: loading it crashed ExecuTorch ({how}: "
                            f"{lines[-1] if lines else 'no message'}); the file is damaged or not a .pte")
    _probed[key] = None


def _program_loader():
    """path -> a program with `method_names` and `load_method(name).execute(inputs)`: ExecuTorch's native
    loader where it is where this edgeres knows it (executorch.runtime's wrapper imports the exporter
    first, 10-30 s for every process that opens a .pte), else the public API."""
    try:
        from executorch.extension.pybindings import _C
    except ImportError:
        from executorch.runtime import Runtime

        return Runtime.get().load_program
    return lambda path: _NativeProgram(_C._load_program(path, enable_etdump=False, debug_buffer_size=0,
                                                        data_path=None,
                                                        program_verification=_C.Verification.InternalConsistency))


class _NativeProgram:
    """The native program as executorch.runtime.Program presents it."""

    def __init__(self, program) -> None:
        self._program = program
        self.method_names = {program.get_method_name(index) for index in range(program.num_methods())}

    def load_method(self, name: str) -> "_NativeMethod":
        return _NativeMethod(self._program.load_method(name))


class _NativeMethod:
    def __init__(self, method) -> None:
        self._method = method

    def execute(self, inputs: list) -> list:
        return self._method(inputs)


class ExecuTorchBackend:
    name: ClassVar[str] = "executorch"
    execution_precisions: ClassVar[tuple[str, ...]] = ()  # runs as built
    execution_precision = None

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        self._lock = threading.Lock()  # a loaded method holds its own input and output buffers: one call at a time
        if device not in (None, "CPU"):
            raise DeviceError(f"ExecuTorch's Python runtime runs on the CPU; device {device!r} is not available")
        try:
            import torch  # outside quiet(): the warning filters and log levels it sets up must stay

            # importing executorch logs a torch deprecation and loading prints native cpuinfo
            # probes to stderr; `--verbose` (logs.set_verbose) lets them through
            with quiet():
                load_program = _program_loader()
        except ImportError:
            raise BackendUnavailableError(f".pte artifacts need ExecuTorch's runtime: {install_hint('mobile')}") from None
        probe_load(path)
        try:
            with quiet():
                self._program = load_program(str(path))
                self._method = self._program.load_method("forward")
        except Exception as error:  # the runtime raises its own untyped errors; its reason goes to stderr
            raise ArtifactError(f"{path} is not a loadable ExecuTorch program: {error} (run again with --verbose "
                                "for ExecuTorch's own log)") from None
        self._torch = torch
        self._path = path

    def embedded_record(self) -> ArtifactRecord | None:
        """The record its constant method returns (.pte files from before it existed have none)."""
        if PTE_RECORD_METHOD not in self._program.method_names:
            return None
        try:
            with quiet():
                text = self._program.load_method(PTE_RECORD_METHOD).execute([])[0]
        except Exception as error:  # a damaged constant: ExecuTorch's own error types, or a bad string
            raise ArtifactError(f"{self._path}: its record method cannot be read ({type(error).__name__}); the file "
                                "is damaged: convert again") from None
        if not isinstance(text, str) or text.startswith(PTE_RECORD_MARKER):
            return None  # never filled: a conversion that stopped before its record was written
        return parse_embedded(text, self._path)

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        """Found in the file's bytes: the record method's constant is a flatbuffer string (a
        little-endian length, then the JSON padded with spaces), and the JSON starts with its
        first key. Each candidate must parse as a whole record."""
        data = read_bytes(path, MODEL_LIMIT, "ExecuTorch program")
        start = data.find(PTE_JSON_START)
        while start >= 4:
            length = struct.unpack_from("<I", data, start - 4)[0]
            try:
                return parse_embedded(data[start:start + length].decode(), path)
            except (ArtifactError, UnicodeDecodeError):
                start = data.find(PTE_JSON_START, start + 1)
        return None

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
