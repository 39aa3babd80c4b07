"""Rockchip's NPU (RKNPU2) for .rknn artifacts: rknn-toolkit-lite2 on the board, the toolkit's simulator on a PC.

On an RK3588/RK3566/RK3568 board `rknn-toolkit-lite2` (and the librknnrt.so of the board's
image) runs the .rknn on the NPU. A PC has no NPU and rknn-toolkit2's simulator cannot load a
.rknn, so there the artifact runs as the simulator's build of the QDQ ONNX it was compiled
from (NAME.qdq.onnx, which ships beside it), with the same toolkit version and platform, in
the toolkit's own environment (edgeres.converter_envs). Which of the two runs is said in the
backend's name, so every timing and check reported through it says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import ArtifactRecord
from ..errors import ArtifactError, BackendUnavailableError, DeviceError
from ..files import MODEL_LIMIT, open_checked
from .base import on_a_linux_pc

LITE_INSTALL = ("pip install rknn-toolkit-lite2 on the board (Rockchip's wheel for its Python, from "
                "github.com/airockchip/rknn-toolkit2, rknn-toolkit-lite2/packages), with the librknnrt.so of the same "
                "version in /usr/lib")


def lite_module():
    try:
        from rknnlite import api
    except ImportError:
        return None
    return api


def simulated_here(path: Path) -> bool:
    """Whether `path` runs on the simulator here: a PC the toolkit's simulator runs on (Linux x86-64) without
    rknn-toolkit-lite2. Anywhere else the board's backend says what to install."""
    return on_a_linux_pc() and lite_module() is None


_DESCRIPTION_TAIL = 1 << 20  # the toolkit writes the model's JSON description at the end of the file


def compiled_for(path: Path) -> dict:
    """The platform and toolkit version the .rknn at `path` was compiled for, from the model's own description
    (read from the file's head and tail only: a board has little memory to spare)."""
    with open_checked(path, MODEL_LIMIT, "RKNN model") as handle:
        head = handle.read(4)
        size = handle.seek(0, 2)
        handle.seek(max(0, size - _DESCRIPTION_TAIL))
        tail = handle.read()
    if head != b"RKNN":
        raise ArtifactError(f"{path.name} is not an RKNN model (it does not start with RKNN): convert again")
    try:
        description = json.loads(tail[tail.rindex(b'{"connection"'):])
        return {"platform": str(description["target_platform"][0]), "version": str(description["version"])}
    except (ValueError, KeyError, IndexError, TypeError):
        raise ArtifactError(f"{path.name} has no model description rknn-toolkit2 writes (platform, version): it is "
                            "damaged or not the toolkit's; convert again") from None


class RknnLiteBackend:
    """A .rknn on the board's NPU through rknn-toolkit-lite2."""

    name: ClassVar[str] = "rknn-toolkit-lite2 (RKNPU)"
    execution_precisions: ClassVar[tuple[str, ...]] = ()  # runs as compiled
    execution_precision = None

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        if device not in (None, "NPU"):
            raise DeviceError(f"{path.name} is an RKNN model: it runs on the NPU only (device NPU)")
        api = lite_module()
        if api is None:
            raise BackendUnavailableError(f".rknn models need rknn-toolkit-lite2 on the board: {LITE_INSTALL}")
        compiled_for(path)  # not an RKNN model at all: say so before the library does, in its own words
        self._lite = api.RKNNLite(verbose=False)
        if self._lite.load_rknn(str(path)) != 0 or self._lite.init_runtime() != 0:
            raise ArtifactError(f"{path.name}: rknn-toolkit-lite2 could not load it on this board's NPU; a .rknn is "
                                "compiled for one platform and runtime version: convert for this board "
                                "(edgeres convert --target rk3588|rk3568|rk3566) with a matching librknnrt.so")

    def embedded_record(self) -> ArtifactRecord | None:
        return None  # a .rknn has no room for it: the sidecar is the record

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        return None

    @property
    def max_batch(self) -> int | None:
        return 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        rows = [self._lite.inference(inputs=[np.ascontiguousarray(batch[i:i + 1])], data_format="nchw")[0]
                for i in range(len(batch))]
        return np.concatenate(rows).astype(np.float32, copy=False).reshape(len(batch), -1)


class RknnSimulatorBackend(RknnLiteBackend):
    """A .rknn on a PC: rknn-toolkit2's simulator runs the QDQ it was compiled from, for the same platform."""

    name: ClassVar[str] = "rknn-toolkit2 simulator (PC, not the chip)"

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        from ..converter_envs import EnvironmentMissingError
        from ..converter_envs.rknn import TOOLKIT_VERSION, Simulator

        if device not in (None, "NPU"):
            raise DeviceError(f"{path.name} is an RKNN model: it runs on the NPU only (device NPU)")
        compiled = compiled_for(path)
        _check_compiled_from(path)
        source = path.with_name(path.name[:-len(path.suffix)] + ".qdq.onnx")
        if not source.is_file():
            raise ArtifactError(f"{path.name}: on a PC it runs on rknn-toolkit2's simulator, which needs the QDQ it was "
                                f"compiled from ({source.name}) beside it: copy the whole set (on the board, "
                                f"{LITE_INSTALL})")
        if compiled["version"] != TOOLKIT_VERSION:
            raise ArtifactError(f"{path.name} was compiled by rknn-toolkit2 {compiled['version']}; the simulator here is "
                                f"{TOOLKIT_VERSION}, which would build another model: convert again")
        try:
            self._simulator = Simulator(source, compiled["platform"], build=False, error=ArtifactError)
        except EnvironmentMissingError as error:
            raise BackendUnavailableError(f"{path.name} runs on rknn-toolkit2's simulator on a PC: {error}") from None
        self.compiled = compiled

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._simulator.run(batch).reshape(len(batch), -1)

    def close(self) -> None:
        self._simulator.close()


def _check_compiled_from(path: Path) -> None:
    """The simulator runs the QDQ beside the .rknn (its hash is checked as a companion): the .rknn itself must be
    the one the record says was compiled from it, or what was run here says nothing of what a board runs."""
    from ..artifact import read_sidecar, sha256_of, sidecar_path

    if not sidecar_path(path).exists():
        return  # during conversion, before the record is written
    expected = ((read_sidecar(path).quantization or {}).get("compiled") or {}).get("rknn_sha256")
    if expected and sha256_of(path) != expected:
        raise ArtifactError(f"{path.name} is not the .rknn its record says was compiled from the QDQ beside it (its "
                            "sha256 differs): copy the set as it was written, or convert again")
