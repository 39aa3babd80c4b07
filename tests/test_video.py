from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from edgeres.runtime.classifier import Classifier
from edgeres.video import VideoError, classify_video, open_source

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(converted) -> Classifier:
    return Classifier(converted("x86", "int8").path)


def test_results_in_order_and_tied_to_their_frames(classifier, clip, tmp_path: Path) -> None:
    path, truth = clip
    summary = classify_video(classifier, str(path), out_dir=tmp_path, realtime=False)
    rows = json.loads((tmp_path / "frames.json").read_text())["frames"]
    indices = [row["index"] for row in rows]
    assert indices == sorted(set(indices)) and len(rows) == summary.frames_classified > 0
    assert summary.frames_read == summary.frames_classified == len(truth)  # offline: every frame
    assert summary.frames_dropped == 0
    correct = [classifier.labels.index(row["label"]) == truth[row["index"]] for row in rows]
    assert sum(correct) / len(correct) >= 0.9  # each result names the digit in its own frame
    timestamps = [row["timestamp_s"] for row in rows]
    assert timestamps == sorted(timestamps)


def test_annotated_video_and_csv(classifier, clip, tmp_path: Path) -> None:
    summary = classify_video(classifier, str(clip[0]), out_dir=tmp_path, max_frames=10, realtime=False)
    assert summary.frames_classified == 10
    video = cv2.VideoCapture(str(tmp_path / "annotated.mp4"))
    assert video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 10
    ok, frame = video.read()
    assert ok and frame.shape == (480, 640, 3)
    lines = (tmp_path / "frames.csv").read_text().splitlines()
    assert lines[0] == "index,timestamp_s,label,probability,latency_ms" and len(lines) == 11
    assert [p.name for p in tmp_path.glob(".*")] == [".edgeres-written"]  # its list of what it wrote; no partials


def test_every_runtime_streams(converted, clip, tmp_path: Path) -> None:
    for target in ("onnx", "rpi"):
        summary = classify_video(Classifier(converted(target, "int8").path), str(clip[0]), max_frames=5,
                                 realtime=False)
        assert summary.frames_classified == 5


@pytest.mark.parametrize("source, message", [
    ("/no/such/video.mp4", "does not exist"),
    ("7", "cannot open video source 7"),
])
def test_sources_that_cannot_be_opened(source: str, message: str) -> None:
    with pytest.raises(VideoError, match=message):
        open_source(source)


def test_a_file_that_is_not_a_video(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp4"
    path.write_text("not a video")
    with pytest.raises(VideoError, match="cannot open video source"):
        open_source(str(path))


def test_realtime_drops_instead_of_queueing(classifier, clip) -> None:
    """Played in real time, results never fall behind: each is for a frame newer than the last."""
    summary = classify_video(classifier, str(clip[0]), realtime=True)
    assert summary.frames_read == len(clip[1])
    assert summary.frames_classified + summary.frames_dropped == summary.frames_read


def test_bad_limits(classifier, clip) -> None:
    with pytest.raises(VideoError, match="--max-frames must be at least 1"):
        classify_video(classifier, str(clip[0]), max_frames=0)


def test_cli_video(monkeypatch, capsys, converted, clip, tmp_path: Path) -> None:
    from tests.conftest import assert_one_red_line, run_cli

    artifact = converted("x86", "int8").path
    code, out, err = run_cli(monkeypatch, capsys, "video", artifact, "--source", clip[0], "--headless",
                             "--out", tmp_path, "--max-frames", "5")
    assert code == 0, err
    assert "frames read / classified / dropped" in out and (tmp_path / "annotated.mp4").exists()
    code, _, err = run_cli(monkeypatch, capsys, "video", artifact, "--source", clip[0], "--headless")
    assert_one_red_line(code, err, "--headless needs --out DIR")
    code, out, err = run_cli(monkeypatch, capsys, "video", artifact, "--source", clip[0], "--max-frames", "3")
    assert code == 0, err  # headless OpenCV here: no window, so it classifies headless and says why
    assert "No window: this OpenCV has no window support" in err and "frames read / classified / dropped" in out


def test_no_window_without_a_display(monkeypatch) -> None:
    """GUI OpenCV aborts the process when it cannot reach a display; a server or ssh session has none."""
    from edgeres import video

    monkeypatch.setattr(video.cv2, "getBuildInformation", lambda: "  GUI:                           GTK3\n")
    monkeypatch.setattr(video.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert "no display" in video.no_window_reason()
    monkeypatch.setenv("DISPLAY", ":0")
    assert video.no_window_reason() is None


def test_camera_is_asked_for_the_smallest_size_covering_the_resize(monkeypatch) -> None:
    """The camera scales for free: it is asked for a size of its own aspect near the model's resize."""
    from edgeres import video

    asked: dict = {}

    class Camera:  # cv2.VideoCapture, replaced at the boundary: no camera on this machine
        native = (1280, 720)

        def __init__(self, source, backend=None) -> None:
            asked.clear()
            asked["source"] = source

        def isOpened(self) -> bool:
            return True

        def get(self, prop: int) -> float:
            return {cv2.CAP_PROP_FRAME_WIDTH: self.native[0], cv2.CAP_PROP_FRAME_HEIGHT: self.native[1]}[prop]

        def set(self, prop: int, value: float) -> bool:
            asked[prop] = value
            return True

    monkeypatch.setattr(cv2, "VideoCapture", Camera)
    assert video.camera_size_for(256, (1280, 720)) == (640, 360)
    assert video.camera_size_for(256, (1920, 1080)) == (640, 360) and video.camera_size_for(224, (640, 480)) == (320, 240)
    assert video.camera_size_for(512, (640, 480)) == (640, 480)  # never more than the camera gives
    assert video.camera_size_for(256, (1000, 1000)) == (1000, 1000)  # an odd aspect is left alone
    open_source("0", resize=256)
    assert asked == {"source": 0, cv2.CAP_PROP_FRAME_WIDTH: 640, cv2.CAP_PROP_FRAME_HEIGHT: 360}
    open_source("0", resize=256, camera_size=(800, 600))
    assert asked == {"source": 0, cv2.CAP_PROP_FRAME_WIDTH: 800, cv2.CAP_PROP_FRAME_HEIGHT: 600}
    open_source("rtsp://camera/stream", resize=256)
    assert asked == {"source": "rtsp://camera/stream"}


@pytest.mark.parametrize("text", ["640", "640x", "x480", "0x480", "\u00b2x1", "640x480x3", "-640x480"])
def test_camera_size_must_be_width_x_height(text: str) -> None:
    from edgeres.cameras import parse_size
    from edgeres.errors import EdgeresError

    with pytest.raises(EdgeresError, match="WIDTHxHEIGHT"):
        parse_size(text)
    assert parse_size("640x480") == (640, 480) and parse_size("1280X720") == (1280, 720)
