"""Camera sources with each device library replaced at its boundary (Picamera2, cv2.VideoCapture);
the GStreamer path runs for real where this OpenCV has GStreamer."""

from __future__ import annotations

import json
import sys
import types

import cv2
import numpy as np
import pytest

from edgeres import cameras
from edgeres.cameras import VideoError, csi_pipeline, has_gstreamer, isp_size_for, usb_mjpg_pipeline
from edgeres.video import open_source


class FakePicamera2:
    """Picamera2's calls as edgeres makes them; frames come from `FakePicamera2.frames` (BGR)."""

    frames: list[np.ndarray] = []
    made: list["FakePicamera2"] = []
    sensor = (4608, 2592)  # Camera Module 3

    def __init__(self, camera_number: int = 0) -> None:
        if camera_number > 0:
            raise IndexError("list index out of range")
        self.camera_properties = {"PixelArraySize": self.sensor}
        self.calls: list[str] = []
        self.read = 0
        FakePicamera2.made.append(self)

    def create_video_configuration(self, main: dict, controls: dict, buffer_count: int) -> dict:
        self.asked = {"main": dict(main), "controls": dict(controls)}
        return {"main": dict(main), "controls": dict(controls), "buffer_count": buffer_count}

    def align_configuration(self, config: dict) -> None:
        width, height = config["main"]["size"]
        config["main"]["size"] = (width // 32 * 32, height)  # Picamera2's align_stream rounds RGB888 widths down

    def configure(self, config: dict) -> None:
        self.calls.append("configure")
        self.configured = config

    def start(self) -> None:
        self.calls.append("start")

    def capture_array(self, stream: str) -> np.ndarray:
        assert stream == "main" and "start" in self.calls
        if self.read >= len(self.frames):
            raise RuntimeError("camera stopped")
        self.read += 1
        return self.frames[self.read - 1]

    def stop(self) -> None:
        self.calls.append("stop")

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture
def picamera2(monkeypatch):
    FakePicamera2.made.clear()
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    return FakePicamera2


def test_picamera_asks_the_isp_for_the_resize(picamera2) -> None:
    capture = open_source("picamera", resize=256)
    camera = picamera2.made[-1]
    assert camera.asked["main"] == {"size": (456, 256), "format": "RGB888"}  # 16:9 at a shorter side of 256
    assert camera.asked["controls"] == {"FrameRate": 30}
    assert capture.get(cv2.CAP_PROP_FRAME_WIDTH) == 448 and capture.get(cv2.CAP_PROP_FPS) == 30  # as aligned
    capture.release()
    assert camera.calls == ["configure", "start", "stop", "close"]


def test_picamera_size_rate_and_number(picamera2) -> None:
    open_source("picamera:0", resize=256, camera_size=(640, 480), fps=15)
    assert picamera2.made[-1].asked == {"main": {"size": (640, 480), "format": "RGB888"}, "controls": {"FrameRate": 15}}
    with pytest.raises(VideoError, match="no Pi camera 1"):
        open_source("picamera:1")
    with pytest.raises(VideoError, match="camera number must be a number"):
        open_source("picamera:front")


def test_picamera_refusing_the_configuration_frees_the_camera(picamera2, monkeypatch) -> None:
    def refuse(self, config) -> None:
        raise RuntimeError("Failed to configure camera")

    monkeypatch.setattr(picamera2, "configure", refuse)
    with pytest.raises(VideoError, match="refused size"):
        open_source("picamera", resize=256)
    assert picamera2.made[-1].calls == ["close"]


def test_a_long_gst_pipeline_is_not_taken_for_a_file(monkeypatch) -> None:
    opened: list = []
    monkeypatch.setattr(cameras, "has_gstreamer", lambda: True)
    monkeypatch.setattr(cv2, "VideoCapture", lambda *args: opened.append(args) or types.SimpleNamespace(isOpened=lambda: True))
    pipeline = "videotestsrc ! " + "queue ! " * 40 + "videoconvert ! appsink"
    open_source("gst:" + pipeline)
    assert opened == [(pipeline, cv2.CAP_GSTREAMER)]


def test_cameras_are_not_paced_files_are() -> None:
    from edgeres.video import is_live

    assert all(is_live(source) for source in ("0", "/dev/video2", "picamera", "csi:1", "gst:x ! appsink",
                                              "rtsp://camera/stream"))
    assert not any(is_live(source) for source in ("clip.mp4", "/data/clip.avi"))


def test_picamera_missing_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as without apt's python3-picamera2
    with pytest.raises(VideoError, match="sudo apt install python3-picamera2.*--system-site-packages"):
        open_source("picamera")


@pytest.mark.slow
def test_picamera_frames_go_through_the_same_video_pipeline(picamera2, converted, held_out, tmp_path) -> None:
    """Latest-frame reader, per-frame results and the annotated video, as for any source."""
    from edgeres.runtime.classifier import Classifier
    from edgeres.video import classify_video

    frames, truth = held_out
    # 16:9, as the ISP gives them: the digit in the middle, the sides its edge pixels repeated
    picamera2.frames = [cv2.copyMakeBorder(frame, 0, 0, 19, 18, cv2.BORDER_REPLICATE) for frame in frames[:12]]
    classifier = Classifier(converted("rpi", "int8").path)
    summary = classify_video(classifier, "picamera", out_dir=tmp_path, realtime=False)
    assert summary.frames_read == summary.frames_classified == 12
    rows = json.loads((tmp_path / "frames.json").read_text())["frames"]
    right = [classifier.labels.index(row["label"]) == truth[row["index"]] for row in rows]
    assert sum(right) >= 9 and (tmp_path / "annotated.mp4").exists()
    assert picamera2.made[-1].calls[-2:] == ["stop", "close"]


def test_isp_sizes_keep_the_aspect_and_are_even() -> None:
    assert isp_size_for(256, (4608, 2592)) == (456, 256)
    assert isp_size_for(224, (3280, 2464)) == (300, 224)  # Camera Module 2, 4:3
    assert isp_size_for(37, (1280, 720)) == (66, 38)


def test_gstreamer_pipelines() -> None:
    assert csi_pipeline(1, (1280, 720), 30, (456, 256)) == (
        "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM), width=1280, height=720, framerate=30/1, "
        "format=NV12 ! nvvidconv flip-method=0 ! video/x-raw, width=456, height=256, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")
    assert usb_mjpg_pipeline("/dev/video2", (1280, 720), 30) == (
        "v4l2src device=/dev/video2 ! image/jpeg, width=1280, height=720, framerate=30/1 ! jpegdec ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false")
    assert "nvv4l2decoder mjpeg=1" in usb_mjpg_pipeline(jetson=True)


def test_gstreamer_source_reaches_opencv_with_its_pipeline(monkeypatch) -> None:
    opened: list = []

    class Capture:  # cv2.VideoCapture, replaced at the boundary
        def __init__(self, *args) -> None:
            opened.append(args)

        def isOpened(self) -> bool:
            return True

    monkeypatch.setattr(cameras, "has_gstreamer", lambda: True)
    monkeypatch.setattr(cv2, "VideoCapture", Capture)
    open_source("csi:0", resize=256, fps=60)
    assert opened[-1] == (csi_pipeline(0, (1280, 720), 60, (456, 256)), cv2.CAP_GSTREAMER)
    open_source("gst-usb:/dev/video1", camera_size=(1280, 720))
    assert opened[-1] == (usb_mjpg_pipeline("/dev/video1", (1280, 720), 30), cv2.CAP_GSTREAMER)
    with pytest.raises(VideoError, match="must end in appsink"):
        open_source("gst:videotestsrc ! autovideosink")


def test_without_gstreamer_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  Video I/O:\n    GStreamer:                   NO\n")
    assert not has_gstreamer()
    with pytest.raises(VideoError, match="no GStreamer support.*JetPack's OpenCV.*--system-site-packages"):
        open_source("csi:0")


@pytest.mark.skipif(not has_gstreamer(), reason="this OpenCV has no GStreamer (pip's wheels are built without it)")
def test_a_real_gstreamer_pipeline() -> None:
    capture = open_source("gst:videotestsrc num-buffers=5 ! video/x-raw, width=320, height=240 ! videoconvert ! "
                          "video/x-raw, format=BGR ! appsink")
    ok, frame = capture.read()
    assert ok and frame.shape == (240, 320, 3)
    capture.release()


def test_v4l2_fourcc_before_size_then_rate(monkeypatch) -> None:
    calls: list = []

    class Camera:  # cv2.VideoCapture, replaced at the boundary
        def __init__(self, *args) -> None:
            calls.append(("open", *args))

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return {cv2.CAP_PROP_FRAME_WIDTH: 1280, cv2.CAP_PROP_FRAME_HEIGHT: 720}[prop]

        def set(self, prop: int, value: float) -> bool:
            calls.append((prop, value))
            return True

    monkeypatch.setattr(cv2, "VideoCapture", Camera)
    monkeypatch.setattr(cameras.sys, "platform", "linux")
    open_source("/dev/video0", resize=256, fourcc="MJPG", fps=30)
    assert calls == [("open", "/dev/video0", cv2.CAP_V4L2), (cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG")),
                     (cv2.CAP_PROP_FRAME_WIDTH, 640), (cv2.CAP_PROP_FRAME_HEIGHT, 360), (cv2.CAP_PROP_FPS, 30)]


@pytest.mark.parametrize("options, message", [
    ({"fourcc": "MJPEG"}, "--fourcc must be four characters"),
    ({"fps": 0}, "--fps must be at least 1"),
])
def test_bad_camera_requests(options: dict, message: str) -> None:
    with pytest.raises(VideoError, match=message):
        open_source("0", **options)
