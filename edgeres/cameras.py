"""Cameras as devices have them: the Pi camera (Picamera2), GStreamer pipelines (a Jetson's
CSI camera, USB cameras decoded by GStreamer) and V4L2 cameras at a chosen size and FOURCC.

Each opener returns an object with `cv2.VideoCapture`'s read/get/isOpened/release, so the
latest-frame reader, the timings and the annotated output are the same for every source.
`--source` names them: `picamera[:N]`, `csi[:N]`, `gst-usb:/dev/videoN`, `gst:PIPELINE`;
a camera index or /dev/videoN is a V4L2 camera.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Callable

import cv2
import numpy as np

from .errors import EdgeresError


class VideoError(EdgeresError):
    """A video source cannot be opened or read, or a window cannot be shown."""


# Capture sizes that nearly every camera offers, per aspect ratio, smallest first.
CAMERA_SIZES = ((320, 240), (640, 480), (1280, 960), (640, 360), (1280, 720), (1920, 1080))
CSI_SENSOR_MODE = (1280, 720)  # a mode every Jetson CSI sensor driver offers (IMX219, IMX477) at 30+ FPS
DEFAULT_FPS = 30
NO_GSTREAMER = (
    "the installed OpenCV has no GStreamer support (pip's opencv-python wheels are built without it). "
    "On a Jetson use JetPack's OpenCV: pip uninstall opencv-python opencv-python-headless, and run "
    "edgeres in a venv made with --system-site-packages (see the README's Jetson install); elsewhere "
    "install your distribution's python3-opencv, or use a V4L2 camera (--source 0)"
)


def parse_size(text: str | None) -> tuple[int, int] | None:
    """--camera-size WIDTHxHEIGHT, checked before any model loads: a typo should cost nothing."""
    if text is None:
        return None
    found = re.fullmatch(r"([0-9]{1,5})[xX]([0-9]{1,5})", text.strip())
    if not found or 0 in (int(found[1]), int(found[2])):
        raise EdgeresError(f"--camera-size must be WIDTHxHEIGHT such as 640x480, got {text!r}")
    return int(found[1]), int(found[2])


def camera_size_for(resize: int, native: tuple[int, int]) -> tuple[int, int]:
    """The smallest common capture size of the camera's own aspect ratio that still covers the resize.

    A camera scales in its own hardware for free; asking a 1280x720 camera for 640x360
    leaves the CPU a few taps per output pixel to resize, with the same field of view.
    A camera whose aspect matches none of the common sizes is left at `native`.
    """
    width, height = native
    for size in CAMERA_SIZES:
        same_aspect = abs(size[0] * height - size[1] * width) <= 0.02 * size[1] * width
        if same_aspect and min(size) >= resize and size[0] <= width:
            return size
    return native


def isp_size_for(resize: int, sensor: tuple[int, int]) -> tuple[int, int]:
    """The sensor's aspect ratio at a shorter side of `resize`, rounded up to even sides.

    An ISP (the Pi's, a Jetson's VIC) scales to any size, so it is asked for the resize itself.
    """
    width, height = sensor
    scale = resize / min(width, height)
    return (_even_up(width * scale), _even_up(height * scale))


def _even_up(value: float) -> int:
    return int(-(-round(value, 6) // 2) * 2)


def has_gstreamer() -> bool:
    """Whether this OpenCV was built with GStreamer (its build information says so)."""
    found = re.search(r"^\s*GStreamer:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return bool(found) and found.group(1).upper() == "YES"


def csi_pipeline(sensor_id: int = 0, sensor_size: tuple[int, int] = CSI_SENSOR_MODE, fps: int = DEFAULT_FPS,
                 out_size: tuple[int, int] | None = None, flip: int = 0) -> str:
    """A GStreamer pipeline for a Jetson CSI camera, scaled to `out_size` in hardware (VIC)."""
    width, height = out_size or sensor_size
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width={sensor_size[0]}, height={sensor_size[1]}, framerate={fps}/1, "
            f"format=NV12 ! nvvidconv flip-method={flip} ! video/x-raw, width={width}, height={height}, "
            f"format=BGRx ! videoconvert ! video/x-raw, format=BGR ! {_APPSINK}")


def usb_mjpg_pipeline(device: str = "/dev/video0", size: tuple[int, int] = (640, 480), fps: int = DEFAULT_FPS,
                      jetson: bool = False) -> str:
    """A GStreamer pipeline for a USB camera's MJPG stream; `jetson` decodes it on the Jetson's NVJPG engine."""
    decode = "jpegparse ! nvv4l2decoder mjpeg=1 ! nvvidconv ! video/x-raw, format=BGRx" if jetson else "jpegdec"
    return (f"v4l2src device={device} ! image/jpeg, width={size[0]}, height={size[1]}, framerate={fps}/1 ! "
            f"{decode} ! videoconvert ! video/x-raw, format=BGR ! {_APPSINK}")


# Keep one frame and drop the rest: the newest frame is what a live classifier wants.
_APPSINK = "appsink drop=true max-buffers=1 sync=false"


def open_gstreamer(pipeline: str):
    if not has_gstreamer():
        raise VideoError(NO_GSTREAMER)
    capture = cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)
    if not capture.isOpened():
        raise VideoError(f"GStreamer could not start the pipeline {pipeline!r}; try it with "
                          f"gst-launch-1.0 (ending in fakesink) to see GStreamer's own error")
    return capture


def open_v4l2(device: int | str, request: "CameraRequest"):
    """A V4L2 camera. The FOURCC goes first: many drivers offer their larger sizes only in MJPG.

    Asked for `request.size`, else for `camera_size_for(resize, its default size)`; it may
    pick another size it supports, and the frames are used as they come.
    """
    backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    capture = cv2.VideoCapture(device, backend)
    if not capture.isOpened():
        raise VideoError(f"cannot open video source {device!r}: no such camera, or it is in use "
                         "(v4l2-ctl --list-devices lists the cameras)")
    if request.fourcc:
        capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*request.fourcc))
    native = native_size(capture)
    wanted = request.size or (camera_size_for(request.resize, native) if request.resize else native)
    if wanted != native:
        capture.set(cv2.CAP_PROP_FRAME_WIDTH, wanted[0])
        capture.set(cv2.CAP_PROP_FRAME_HEIGHT, wanted[1])
    if request.fps:
        capture.set(cv2.CAP_PROP_FPS, request.fps)
    return capture


def native_size(capture) -> tuple[int, int]:
    return int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))


class SensorFrame(np.ndarray):
    """A frame with the scores the camera's own sensor network gave for it (the IMX500): `sensor_logits`."""

    sensor_logits: np.ndarray | None = None


# frames that carry no output tensor while the network is uploaded to the sensor (Picamera2: "can take several
# minutes" the first time) are skipped, for at most this long
SENSOR_START_SECONDS = 600


class PicameraCapture:
    """A Pi camera through Picamera2 (libcamera), read like a cv2.VideoCapture.

    The ISP scales the sensor's frames to the size asked for, so the CPU resizes little.
    Picamera2's "RGB888" format holds each pixel as B, G, R in memory: OpenCV's BGR order.
    With `sensor` (an IMX500 backend, whose network is on the camera's sensor) each frame is a
    SensorFrame carrying the scores the sensor computed for it.
    """

    def __init__(self, camera_number: int, size: tuple[int, int] | None, resize: int | None, fps: int | None,
                 sensor=None) -> None:
        self._sensor = sensor
        if sensor is not None and camera_number != sensor.camera_number:
            raise VideoError(f"the IMX500 network is on Pi camera {sensor.camera_number}, not {camera_number}: "
                             f"--source picamera:{sensor.camera_number}")
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise VideoError(
                "--source picamera needs Picamera2: on Raspberry Pi OS, sudo apt install python3-picamera2, "
                "and run edgeres in a venv made with --system-site-packages (apt's Picamera2 is not on pip)"
            ) from None
        try:
            self._camera = Picamera2(camera_number)
        except (IndexError, RuntimeError) as error:
            raise VideoError(f"no Pi camera {camera_number} ({error}); rpicam-hello --list-cameras lists them") from None
        try:
            self._start(size, resize, fps)
        except RuntimeError as error:  # libcamera refused the configuration: free the camera for the next try
            self._camera.close()
            raise VideoError(f"the Pi camera refused size {size or resize} at {fps or DEFAULT_FPS} FPS ({error}); "
                             "try another --camera-size or --fps") from None

    def _start(self, size: tuple[int, int] | None, resize: int | None, fps: int | None) -> None:
        sensor = tuple(self._camera.camera_properties["PixelArraySize"])
        wanted = size or (isp_size_for(resize, sensor) if resize else sensor)
        self.fps = fps or DEFAULT_FPS
        config = self._camera.create_video_configuration(
            main={"size": wanted, "format": "RGB888"}, controls={"FrameRate": self.fps}, buffer_count=4)
        self._camera.align_configuration(config)  # the ISP's line alignment may round the width down
        self._camera.configure(config)
        self.size = tuple(config["main"]["size"])
        self._camera.start()
        if self._sensor is not None:
            self._sensor.camera_started()

    def read(self) -> tuple[bool, np.ndarray | None]:
        try:
            if self._sensor is None:
                return True, self._camera.capture_array("main")
            return self._read_with_scores()
        except RuntimeError:  # the camera was stopped or unplugged
            return False, None

    def _read_with_scores(self) -> tuple[bool, np.ndarray | None]:
        started = time.monotonic()
        while time.monotonic() - started < SENSOR_START_SECONDS:
            request = self._camera.capture_request()
            try:  # the frame and the metadata that carries the sensor's output for it, released together
                frame, metadata = request.make_array("main"), request.get_metadata()
            finally:
                request.release()
            logits = self._sensor.logits_of(metadata)
            if logits is not None:
                tagged = frame.view(SensorFrame)
                tagged.sensor_logits = logits
                return True, tagged
        raise VideoError(f"the IMX500 gave no scores in {SENSOR_START_SECONDS} s: its network did not start "
                         "(sudo apt install --reinstall imx500-all, then reboot)")

    def get(self, prop: int) -> float:
        return {cv2.CAP_PROP_FPS: float(self.fps), cv2.CAP_PROP_FRAME_WIDTH: float(self.size[0]),
                cv2.CAP_PROP_FRAME_HEIGHT: float(self.size[1])}.get(prop, 0.0)

    def isOpened(self) -> bool:  # noqa: N802 (cv2.VideoCapture's name)
        return True

    def release(self) -> None:
        self._camera.stop()
        self._camera.close()


def _number(text: str, what: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise VideoError(f"{what} must be a number, got {text!r}")
    return int(text)


Opener = Callable[[str, "CameraRequest"], object]


class CameraRequest:
    """What the user asked of a camera: a size, a FOURCC, a rate; the model's resize; and the sensor that runs
    the network, where it is the camera's own (the IMX500)."""

    def __init__(self, resize: int | None, size: tuple[int, int] | None, fourcc: str | None, fps: int | None,
                 sensor=None) -> None:
        if fourcc is not None and not re.fullmatch(r"[0-9A-Za-z ]{4}", fourcc):
            raise VideoError(f"--fourcc must be four characters such as MJPG or YUYV, got {fourcc!r}")
        if fps is not None and fps < 1:
            raise VideoError(f"--fps must be at least 1, got {fps}")
        self.resize, self.size, self.fourcc, self.fps = resize, size, fourcc, fps
        self.sensor = sensor


def _picamera(rest: str, request: CameraRequest):
    number = _number(rest, "the Pi camera number") if rest or request.sensor is None else request.sensor.camera_number
    return PicameraCapture(number, request.size, request.resize, request.fps, request.sensor)


def _csi(rest: str, request: CameraRequest):
    fps = request.fps or DEFAULT_FPS
    out = request.size or (isp_size_for(request.resize, CSI_SENSOR_MODE) if request.resize else None)
    return open_gstreamer(csi_pipeline(_number(rest, "the CSI sensor id"), CSI_SENSOR_MODE, fps, out))


def _gst_usb(rest: str, request: CameraRequest):
    size = request.size or (640, 480)
    return open_gstreamer(usb_mjpg_pipeline(rest or "/dev/video0", size, request.fps or DEFAULT_FPS))


def _gst(rest: str, request: CameraRequest):
    if "appsink" not in rest:
        raise VideoError("a gst: pipeline must end in appsink (for example ... ! videoconvert ! "
                          "video/x-raw, format=BGR ! appsink drop=true max-buffers=1)")
    return open_gstreamer(rest)


# `--source KIND[:REST]`; adding a kind of camera is one function and one line here.
OPENERS: dict[str, Opener] = {"picamera": _picamera, "csi": _csi, "gst-usb": _gst_usb, "gst": _gst}
