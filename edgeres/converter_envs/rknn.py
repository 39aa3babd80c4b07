"""Rockchip's rknn-toolkit2 in its own environment: compiling a QDQ ONNX to .rknn, and its PC simulator."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConversionError, EdgeresError, PlanRefusedError
from . import ConverterEnv, Install, killed_on_error, run_tool

TOOLKIT_VERSION = "2.5.0"
RKNN_TOOLKIT2 = ConverterEnv(
    name=f"rknn-toolkit2-{TOOLKIT_VERSION}",
    installs=(
        # PyPI's torch for Linux is a CUDA build with several GB of NVIDIA libraries; the toolkit needs the CPU
        Install(("torch==2.13.0+cpu", "setuptools==80.9.0"),  # the toolkit imports pkg_resources (gone in 81)
                ("--extra-index-url", "https://download.pytorch.org/whl/cpu")),
        Install(("numpy==1.26.4", "onnx==1.18.0", "onnxruntime==1.26.0", "protobuf==4.25.4", "psutil==7.2.2",
                 "ruamel.yaml==0.19.1", "scipy==1.17.1", "tqdm==4.70.1", "opencv-python-headless==4.11.0.86",
                 "fast-histogram==0.14")),
        # its declared torch<=2.4.0 would fetch that CUDA build: the pins above stand in for its dependencies
        Install((f"rknn-toolkit2=={TOOLKIT_VERSION}",), ("--no-deps",)),
    ),
    imports="rknn.api",
    size="about 1.5 GB",
    tool="rknn",
    note=("rknn-toolkit2 pins numpy 1.x, onnx 1.18 and torch 2.4 or older. It is installed without its declared "
          "dependencies, beside a CPU build of torch 2.13 (from PyTorch's CPU index), which it runs with (measured: "
          "its compile and simulator on the digits and photo ResNet18s)"),
)
TOOL = Path(__file__).with_name("rknn_tool.py")


def compile_rknn(source: Path, platform: str, out: Path, log: Callable[[str], None] = print) -> dict:
    """rknn-toolkit2 compiles the QDQ ONNX at `source` for `platform` into `out`; its version and platform."""
    with tempfile.TemporaryFile("w+") as toolkit_log:
        process = run_tool(RKNN_TOOLKIT2, TOOL, ["build", str(source), platform, str(out)], log,
                           stdout=subprocess.PIPE, stderr=toolkit_log)
        with killed_on_error(process):
            line = process.stdout.readline()
            if not line and process.wait() < 0:  # killed by a signal: measured, a segfault on some kept layers
                raise PlanRefusedError(f"rknn-toolkit2 crashed compiling for {platform} (signal {-process.returncode})"
                                       f"{_said(toolkit_log, '')}")
            answer = _answer(line, toolkit_log, process, ConversionError)
            process.wait()
    if not out.is_file():
        raise ConversionError(f"rknn-toolkit2 reported success for {platform} but wrote no {out.name}")
    return answer


# printed by the toolkit on every build, failed or not: not a reason
_NOISE = ("Unkown op target", "rknn-toolkit2 version:", "Traceback")


def _answer(line: bytes, toolkit_log, process: subprocess.Popen, error: type[EdgeresError]) -> dict:
    """The tool's JSON line, or its error as `error`, with the toolkit's own error lines where they add to it."""
    try:
        answer = json.loads(line)
    except ValueError:
        answer = {"error": f"the rknn-toolkit2 step stopped with status {process.wait()} without an answer"}
    if not isinstance(answer, dict) or "error" in answer:
        reason = answer.get("error") if isinstance(answer, dict) else f"it answered {line[:80]!r}"
        raise error(f"rknn-toolkit2: {reason}{_said(toolkit_log, str(reason))}")
    return answer


def _said(toolkit_log, reason: str) -> str:
    toolkit_log.flush()
    toolkit_log.seek(0)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in toolkit_log.read().splitlines()]
    extra = [line[2:] for line in lines if line.startswith("E ") and reason not in line
             and not any(noise in line for noise in _NOISE)]
    return f" ({'; '.join(dict.fromkeys(extra))[-800:]})" if extra else ""


class Simulator:
    """rknn-toolkit2's simulator running the QDQ ONNX a .rknn was compiled from (it cannot load a .rknn).

    Errors are `error` (ConversionError while converting, ArtifactError where an artifact is run); where
    `build` is False (opening an artifact), a missing environment is an error instead of a 1.5 GB build.
    """

    def __init__(self, source: Path, platform: str, log: Callable[[str], None] = print,
                 dataset: Path | None = None, *, build: bool = True,
                 error: type[EdgeresError] = ConversionError) -> None:
        """`dataset` (the toolkit's list of .npy inputs, each (1, C, H, W)): `source` is a float ONNX for the
        toolkit's own default quantization, which the benchmark compares with edgeres' as a peer."""
        self._error = error
        self._log = tempfile.TemporaryFile("w+")
        arguments = ["serve", str(source), platform, *([str(dataset)] if dataset else [])]
        try:
            self._process = run_tool(RKNN_TOOLKIT2, TOOL, arguments, log, build=build, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)
        except BaseException:
            self._log.close()
            raise
        with killed_on_error(self._process):
            self.ready = _answer(self._process.stdout.readline(), self._log, self._process, error)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        with killed_on_error(self._process):
            try:
                self._process.stdin.write((json.dumps({"shape": list(batch.shape)}) + "\n").encode()
                                          + batch.tobytes())
                self._process.stdin.flush()
            except OSError:  # it died: its answer below says why
                pass
            head = _answer(self._process.stdout.readline(), self._log, self._process, self._error)
            try:
                shape = [int(n) for n in head["shape"]]
            except (KeyError, TypeError, ValueError):
                raise self._error(f"rknn-toolkit2's simulator answered {str(head)[:200]}, not outputs") from None
            data = self._process.stdout.read(4 * int(np.prod(shape)))
            if len(data) != 4 * int(np.prod(shape)):
                raise self._error("rknn-toolkit2's simulator stopped in the middle of its outputs")
            return np.frombuffer(data, np.float32).reshape(shape).copy()

    def close(self) -> None:
        process = getattr(self, "_process", None)
        if process is not None and process.poll() is None:
            process.stdin.close()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._log.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to tell
            pass


if __name__ == "__main__":  # python -m edgeres.converter_envs.rknn: build the environment ahead of time
    from . import ensure

    print(ensure(RKNN_TOOLKIT2))
