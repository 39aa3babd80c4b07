"""Rockchip's rknn-toolkit2 in its own environment: compiling a QDQ ONNX to .rknn, and its PC simulator."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConversionError
from . import ConverterEnv, run_tool

TOOLKIT_VERSION = "2.5.0"
RKNN_TOOLKIT2 = ConverterEnv(
    name=f"rknn-toolkit2-{TOOLKIT_VERSION}",
    requirements=("numpy==1.26.4", "onnx==1.18.0", "onnxruntime==1.26.0", "protobuf==4.25.4", "psutil==7.2.2",
                  "ruamel.yaml==0.19.1", "scipy==1.17.1", "tqdm==4.70.1", "opencv-python-headless==4.11.0.86",
                  "fast-histogram==0.14", "torch==2.13.0", "sympy==1.14.0", "filelock", "jinja2", "networkx",
                  "fsspec", "typing_extensions",
                  "setuptools==80.9.0"),  # the toolkit imports pkg_resources, which setuptools 81 dropped
    without_deps=(f"rknn-toolkit2=={TOOLKIT_VERSION}",),
    imports="rknn.api",
    size="about 1.5 GB",
    note=("rknn-toolkit2 pins numpy 1.x, onnx 1.18 and torch 2.4 or older. Its declared torch pin would fetch a CUDA "
          "build of several GB from PyPI, so it is installed without its declared dependencies beside a CPU build of "
          "torch 2.13, which it runs with (measured: its compile and simulator on the digits and photo ResNet18s). "
          "Where pip finds no CPU build of torch, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu"),
)
TOOL = Path(__file__).with_name("rknn_tool.py")


def compile_rknn(source: Path, platform: str, out: Path, log: Callable[[str], None] = print) -> dict:
    """rknn-toolkit2 compiles the QDQ ONNX at `source` for `platform` into `out`; its version and platform."""
    with tempfile.TemporaryFile("w+") as toolkit_log:
        process = run_tool(RKNN_TOOLKIT2, TOOL, ["build", str(source), platform, str(out)], log,
                           stdout=subprocess.PIPE, stderr=toolkit_log)
        answer = _answer(process.stdout.readline(), toolkit_log, process)
        process.wait()
    if not out.is_file():
        raise ConversionError(f"rknn-toolkit2 reported success for {platform} but wrote no {out.name}")
    return answer


def _answer(line: bytes, toolkit_log, process: subprocess.Popen) -> dict:
    """The tool's JSON line, or its error as edgeres's own, with the toolkit's own error lines."""
    try:
        answer = json.loads(line)
    except ValueError:
        answer = {"error": f"the rknn-toolkit2 step stopped with status {process.wait()} without an answer"}
    if "error" not in answer:
        return answer
    process.wait()
    toolkit_log.seek(0)
    # the toolkit's own error lines ("E build: ..."), where they add to the reason it raised
    said = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in toolkit_log.read().splitlines()]
    extra = [line[2:] for line in said if line.startswith("E ") and "Traceback" not in line
             and "version:" not in line and answer["error"] not in line]
    detail = "; ".join(dict.fromkeys(extra))[-800:]
    raise ConversionError(f"rknn-toolkit2: {answer['error']}" + (f" ({detail})" if detail else ""))


class Simulator:
    """rknn-toolkit2's simulator running the QDQ ONNX a .rknn was compiled from (it cannot load a .rknn)."""

    def __init__(self, source: Path, platform: str, log: Callable[[str], None] = print) -> None:
        self._log = tempfile.TemporaryFile("w+")
        self._process = run_tool(RKNN_TOOLKIT2, TOOL, ["serve", str(source), platform], log,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        try:
            self.ready = _answer(self._process.stdout.readline(), self._log, self._process)
        except BaseException:
            self.close()
            raise

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        try:
            self._process.stdin.write((json.dumps({"shape": list(batch.shape)}) + "\n").encode() + batch.tobytes())
            self._process.stdin.flush()
            shape = json.loads(self._process.stdout.readline())["shape"]
            data = self._process.stdout.read(4 * int(np.prod(shape)))
            return np.frombuffer(data, np.float32).reshape(shape).copy()
        except (OSError, ValueError, KeyError, TypeError):
            self.close()
            raise ConversionError("rknn-toolkit2's simulator stopped while running a batch") from None

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to tell
            pass
