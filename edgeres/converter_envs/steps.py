"""edgeres' side of a vendor step run in a converter environment (the step's side is tool_io.py).

`run_step` runs a one-shot step (compile, quantize) and returns its JSON answer; `ServedModel`
keeps a step that serves a model (a simulator) and sends it batches. Either turns the step's
failure into edgeres' own error: the vendor's reason, with the error lines of its log that add
to it.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConversionError, EdgeresError
from . import ConverterEnv, killed_on_error, run_tool


@dataclass(frozen=True)
class Vendor:
    """How a vendor's step is named in messages, and which lines of its log are its errors."""

    name: str  # e.g. "rknn-toolkit2"
    error_line: Callable[[str], str | None]  # a log line (colours removed) -> its error text, or None
    noise: tuple[str, ...] = ()  # error lines printed on every run, failed or not: not a reason


def answer_of(vendor: Vendor, line: bytes, log, process: subprocess.Popen, error: type[EdgeresError]) -> dict:
    """The step's JSON line, or its error as `error`, with the vendor's own error lines where they add to it."""
    try:
        answer = json.loads(line)
    except ValueError:
        answer = {"error": f"the {vendor.name} step stopped with status {process.wait()} without an answer"}
    if not isinstance(answer, dict) or "error" in answer:
        reason = answer.get("error") if isinstance(answer, dict) else f"it answered {line[:80]!r}"
        raise error(f"{vendor.name}: {reason}{said_in_log(vendor, log, str(reason))}")
    return answer


def said_in_log(vendor: Vendor, log, reason: str) -> str:
    log.flush()
    log.seek(0)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in log.read().splitlines()]
    found = [vendor.error_line(line) for line in lines]
    extra = [text for text in found if text and not (reason and reason in text)
             and not any(n in text for n in vendor.noise)]
    return f" ({'; '.join(dict.fromkeys(extra))[-800:]})" if extra else ""


def run_step(vendor: Vendor, env: ConverterEnv, tool: Path, arguments: list[str],
             log: Callable[[str], None] = print, error: type[EdgeresError] = ConversionError,
             doing: str = "", crashed: type[EdgeresError] | None = None) -> dict:
    """Run the step to its end; its answer. Killed by a signal (a toolkit's crash): `crashed` (default `error`),
    saying what it was `doing`."""
    with tempfile.TemporaryFile("w+") as vendor_log:
        process = run_tool(env, tool, arguments, log, stdout=subprocess.PIPE, stderr=vendor_log)
        with killed_on_error(process):
            while True:
                line = process.stdout.readline()
                if not line and process.wait() < 0:
                    what = f"{vendor.name} crashed{' ' + doing if doing else ''} (signal {-process.returncode})"
                    raise (crashed or error)(what + said_in_log(vendor, vendor_log, ""))
                answer = answer_of(vendor, line, vendor_log, process, error)
                if set(answer) != {"progress"}:
                    break
                log(f"  {vendor.name}: {answer['progress']}")  # a step of minutes says where it is
            process.wait()
    return answer


class ServedModel:
    """A step that serves a model: started once, then float32 batches in, float32 outputs back.

    Errors are `error` (ConversionError while converting, ArtifactError where an artifact is run); where
    `build` is False (opening an artifact), a missing environment is an error instead of a build.
    """

    def __init__(self, vendor: Vendor, env: ConverterEnv, tool: Path, arguments: list[str],
                 log: Callable[[str], None] = print, *, build: bool = True,
                 error: type[EdgeresError] = ConversionError) -> None:
        self._vendor, self._error = vendor, error
        self._log = tempfile.TemporaryFile("w+")
        try:
            self._process = run_tool(env, tool, arguments, log, build=build, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log)
        except BaseException:
            self._log.close()
            raise
        with killed_on_error(self._process):
            self.ready = self._answer()

    def _answer(self) -> dict:
        return answer_of(self._vendor, self._process.stdout.readline(), self._log, self._process, self._error)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, np.float32)
        with killed_on_error(self._process):
            try:
                self._process.stdin.write((json.dumps({"shape": list(batch.shape)}) + "\n").encode()
                                          + batch.tobytes())
                self._process.stdin.flush()
            except OSError:  # it died: its answer below says why
                pass
            head = self._answer()
            try:
                shape = [int(n) for n in head["shape"]]
            except (KeyError, TypeError, ValueError):
                raise self._error(f"{self._vendor.name} answered {str(head)[:200]}, not outputs") from None
            data = self._process.stdout.read(4 * int(np.prod(shape)))
            if len(data) != 4 * int(np.prod(shape)):
                raise self._error(f"{self._vendor.name} stopped in the middle of its outputs")
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
