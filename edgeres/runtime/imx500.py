"""Sony IMX500 artifacts (NAME.imx500.zip): the sensor's own network on the Pi, MCT's simulation on a PC.

On a Raspberry Pi with the AI Camera, `imx500-package` (Raspberry Pi OS: apt install imx500-tools)
turns the package into a .rpk (made once, beside it, named by the package's hash), which Picamera2's IMX500 helper uploads to the sensor; the
sensor then runs the network on every frame it captures and delivers the output tensor in the
frame's metadata. It cannot classify a frame from elsewhere: `edgeres video --source picamera`
reads the scores it gives, and the CPU only reads them. On a PC the artifact runs as MCT's
simulation of the quantized graph it was compiled from (NAME.mct.onnx beside it, MCT's own
quantizer ops), in the toolchain's environment. Which of the two runs is in the backend's name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..artifact import ArtifactRecord
from ..errors import ArtifactError, BackendUnavailableError, DeviceError
from .base import on_a_linux_pc

SUFFIX = ".imx500.zip"
PICAMERA_INSTALL = ("on Raspberry Pi OS: sudo apt install imx500-all python3-picamera2 (the AI Camera's firmware, "
                    "imx500-package and Picamera2), and run edgeres in a venv made with --system-site-packages")


def imx500_class():
    try:
        from picamera2.devices import IMX500
    except ImportError:
        return None
    return IMX500


def simulated_here(path: Path) -> bool:
    """Whether `path` runs on MCT's simulation here: a PC (Linux x86-64) without Picamera2's IMX500 helper."""
    return on_a_linux_pc() and imx500_class() is None


def stem_of(path: Path) -> str:
    if not path.name.endswith(SUFFIX):
        raise ArtifactError(f"{path.name}: an IMX500 package edgeres wrote is named NAME{SUFFIX}")
    return path.name[:-len(SUFFIX)]


def check_package(path: Path) -> None:
    """The converter's package, not another zip: its compiled network's parameters (dnnParams.xml) and static
    data (l2staticData.bin) inside, as imxconv-pt 3.19 writes them."""
    try:
        with zipfile.ZipFile(path) as package:
            names = package.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise ArtifactError(f"{path.name} is not the IMX500 converter's package ({error}): convert again") from None
    if not {"dnnParams.xml", "l2staticData.bin"} <= set(names):
        raise ArtifactError(f"{path.name} holds {', '.join(names) or 'nothing'}, not a network imxconv-pt compiled: "
                            "convert again")


class Imx500CameraBackend:
    """The network on the AI Camera's sensor, through Picamera2's IMX500 helper: scores come with each frame."""

    name: ClassVar[str] = "IMX500 sensor (Picamera2)"
    execution_precisions: ClassVar[tuple[str, ...]] = ()
    execution_precision = None
    on_sensor: ClassVar[bool] = True  # it classifies the camera's own frames only

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        if device not in (None, "NPU"):
            raise DeviceError(f"{path.name} is an IMX500 network: it runs on the camera's sensor only (device NPU)")
        helper = imx500_class()
        if helper is None:
            raise BackendUnavailableError(f"{path.name} runs on the Raspberry Pi AI Camera: {PICAMERA_INSTALL}")
        check_package(path)
        self.rpk = packaged(path)
        try:
            self.sensor = helper(str(self.rpk))  # uploads the network to the sensor (minutes, the first time)
        except (RuntimeError, OSError) as error:  # no AI Camera, or its firmware refused the network
            raise DeviceError(f"the IMX500 did not take {path.name}'s network ({error}): is the AI Camera connected "
                              "(rpicam-hello --list-cameras) and imx500-all installed?") from None
        self.camera_number = self.sensor.camera_num

    def camera_started(self) -> None:
        """Once its camera runs (as Picamera2's examples do it): the network sees the centre square of the
        sensor's view, as edgeres' resize and centre crop would give it."""
        self.sensor.set_inference_aspect_ratio(self.sensor.get_input_size())

    def embedded_record(self) -> ArtifactRecord | None:
        return None

    @staticmethod
    def read_record(path: Path) -> ArtifactRecord | None:
        return None

    @property
    def max_batch(self) -> int | None:
        return 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise DeviceError("the IMX500 classifies the frames its own sensor captures, not frames given to it: "
                          "read them with `edgeres video ARTIFACT --source picamera` (in Python: "
                          "edgeres.cameras.PicameraCapture with Classifier.sensor)")

    def logits_of(self, metadata: dict) -> np.ndarray | None:
        """The network's output for the frame whose metadata this is; None where the frame carries none (the
        firmware is still loading)."""
        outputs = self.sensor.get_outputs(metadata, add_batch=True)
        if outputs is None:
            return None
        return np.asarray(outputs[0], np.float32).reshape(1, -1)


def packaged(path: Path) -> Path:
    """The .rpk of the package at `path`, made by imx500-package once per package: named by the package's
    hash, so a package converted again is never run as the network of the one before."""
    from ..artifact import sha256_of

    rpk = path.with_name(f"{stem_of(path)}.{sha256_of(path)[:12]}.rpk")
    if rpk.is_file():
        return rpk
    tool = shutil.which("imx500-package")
    if tool is None:
        raise BackendUnavailableError(f"{path.name} is packaged for the sensor by imx500-package, which is not "
                                      f"installed: {PICAMERA_INSTALL}")
    try:
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:
            done = subprocess.run([tool, "-i", str(path), "-o", folder], capture_output=True, text=True)
            made = Path(folder) / "network.rpk"
            if done.returncode != 0 or not made.is_file():
                said = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
                raise ArtifactError(f"imx500-package could not package {path.name} ({said[0]}): convert again, or "
                                    "update imx500-tools")
            os.replace(made, rpk)  # whole or not at all: a half-written .rpk would be uploaded next time
    except OSError as error:
        raise ArtifactError(f"cannot write {rpk.name} beside {path.name} ({error.strerror}): copy the set to a "
                            "folder you can write to") from None
    return rpk


class Imx500SimulatorBackend(Imx500CameraBackend):
    """An IMX500 package on a PC: MCT's simulation of the quantized graph it was compiled from."""

    name: ClassVar[str] = "MCT's IMX500 simulation (PC, not the sensor)"
    on_sensor: ClassVar[bool] = False

    def __init__(self, path: Path, threads: int | None, device: str | None = None,
                 precision: str | None = None) -> None:
        from ..converter_envs import EnvironmentMissingError
        from ..converter_envs.imx500 import Simulator

        if device not in (None, "NPU"):
            raise DeviceError(f"{path.name} is an IMX500 network: it runs on the camera's sensor only (device NPU)")
        check_package(path)
        source = path.with_name(stem_of(path) + ".mct.onnx")
        if not source.is_file():
            raise ArtifactError(f"{path.name}: on a PC it runs as MCT's simulation of the graph it was compiled from "
                                f"({source.name}), which must be beside it: copy the whole set")
        try:
            self._simulator = Simulator(source, build=False, error=ArtifactError)
        except EnvironmentMissingError as error:
            raise BackendUnavailableError(f"{path.name} runs as MCT's IMX500 simulation on a PC: {error}") from None

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._simulator.run(batch).reshape(len(batch), -1)

    def close(self) -> None:
        self._simulator.close()
