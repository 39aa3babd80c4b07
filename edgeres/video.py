"""Live classification of a camera, a video file or a stream.

Capture runs in its own thread and keeps only the newest frame: when inference is slower
than the source, frames are dropped (and counted), never queued, so the lag cannot grow.
A video file is played at its own frame rate, as a camera would deliver it.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from .artifact import atomic_path
from .files import VIDEO_LIMIT, checked
from .written import mark_written, refuse_to_overwrite
from .cameras import CAMERA_SIZES, OPENERS, CameraRequest, VideoError, camera_size_for, open_v4l2  # noqa: F401
from .runtime.classifier import Classifier, Prediction


@dataclass(frozen=True)
class FrameResult:
    index: int  # position of the frame in the source, counting dropped frames
    timestamp_s: float  # when the frame was captured, from the start
    label: str
    probability: float
    latency_ms: float  # capture to prediction


@dataclass
class VideoSummary:
    frames_read: int = 0
    frames_classified: int = 0
    frames_dropped: int = 0
    seconds: float = 0.0
    fps_mean: float = 0.0
    fps_p5: float = 0.0  # the slowest 5% of inter-result intervals, as frames per second
    latency_ms_mean: float = 0.0
    latency_ms_p95: float = 0.0
    error: str | None = None  # why the source failed while being read
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def classified_share(self) -> float:
        return self.frames_classified / self.frames_read if self.frames_read else 0.0


def is_camera(source: str | int) -> bool:
    return isinstance(source, int) or (isinstance(source, str) and (source.isdigit() or source.startswith("/dev/video")))


def open_source(source: str | int, resize: int | None = None, camera_size: tuple[int, int] | None = None,
                fourcc: str | None = None, fps: int | None = None, sensor=None):
    """A camera (an index, /dev/videoN, picamera[:N], csi[:N], gst-usb:/dev/videoN, gst:PIPELINE),
    a file path, or a stream URL (rtsp://, http://).

    A camera is asked for `camera_size` (width, height) when given, else for a size near
    the model's `resize` (see `edgeres.cameras`), and for `fourcc` and `fps` when given. With
    `sensor` (a network on the camera's own sensor, the IMX500) only that camera can be the source.
    """
    text = str(source)
    kind, _, rest = text.partition(":")
    if sensor is not None and (kind != "picamera" or _is_path(text)):
        raise VideoError(f"this network runs on the IMX500 sensor, which classifies only its own frames: "
                         f"--source picamera, not {text}")
    if kind in OPENERS and not _is_path(text):
        return OPENERS[kind](rest, CameraRequest(resize, camera_size, fourcc, fps, sensor))
    if is_camera(source):
        return open_v4l2(int(text) if text.isdigit() else text, CameraRequest(resize, camera_size, fourcc, fps))
    if "://" not in text and not _is_path(text):
        raise VideoError(f"video source {text} does not exist; give a file, a camera (0, /dev/video0, picamera, "
                         "csi:0) or a stream URL")
    if "://" not in text:  # a file: a named pipe or a device would block OpenCV's reader for good
        checked(Path(text), VIDEO_LIMIT, "video", VideoError)
    capture = cv2.VideoCapture(text)
    if not capture.isOpened():
        raise VideoError(f"cannot open video source {text!r}: not a video OpenCV can decode")
    return capture


def _is_path(text: str) -> bool:
    try:
        return Path(text).exists()
    except OSError:  # a name too long for the file system (a GStreamer pipeline): not a file
        return False


def is_live(source: str | int) -> bool:
    """A camera or a stream, which delivers at its own pace, rather than a file that must be paced."""
    return is_camera(source) or str(source).partition(":")[0] in OPENERS or "://" in str(source)


class LatestFrame:
    """Reads a source in a thread and keeps only the newest frame.

    realtime=False is for offline files: no pacing and no dropping, the reader waits
    until the previous frame has been taken, so every frame is classified.
    """

    def __init__(self, capture: cv2.VideoCapture, *, realtime: bool, paced: bool = True,
                 on_change: Callable[[], None] = lambda: None, start: bool = True) -> None:
        """`on_change` is called (in the capture thread) when a frame arrives or the source ends;
        `start=False` waits for `start()` (several sources opened first, then started together)."""
        self._capture = capture
        self._on_change = on_change
        self._realtime = realtime
        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and fps > 0 else 30.0  # the source's own rate, for writing its annotated video
        # A camera's read() already waits for its next frame; pacing it by its nominal rate would
        # only age the frames when it runs faster than it says.
        self._frame_interval = 1.0 / fps if paced and realtime and fps and fps > 0 else 0.0
        self._condition = threading.Condition()
        self._latest: tuple[int, float, np.ndarray] | None = None
        self._finished = False
        self.error: str | None = None  # why the source failed while being read, if it did
        self.frames_read = 0
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._read, name="edgeres-capture", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread.start()

    def _read(self) -> None:
        try:
            self._read_until_done()
        except Exception as error:  # noqa: BLE001 - a decoder or driver failure ends this source, with its reason
            self.error = f"{type(error).__name__}: {error}"
        finally:
            with self._condition:
                self._finished = True
                self._condition.notify_all()
            # released here, by the thread that reads: never under a read() still running
            self._capture.release()
            self._on_change()

    def _read_until_done(self) -> None:
        while not self._finished:
            ok, frame = self._capture.read()
            if not ok:
                return
            index = self.frames_read
            self.frames_read += 1
            if self._frame_interval:  # a file plays at its own rate, as a camera would
                delay = self.started + index * self._frame_interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            with self._condition:
                while not self._realtime and self._latest is not None and not self._finished:
                    self._condition.wait()  # offline: hand over every frame
                self._latest = (index, time.perf_counter() - self.started, frame)
                self._condition.notify_all()
            self._on_change()

    def frames(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """The newest frame each time one is asked for; frames in between are dropped."""
        while True:
            with self._condition:
                while self._latest is None and not self._finished:
                    self._condition.wait()
                if self._latest is None:
                    return
                latest, self._latest = self._latest, None
                self._condition.notify_all()
            yield latest

    def take(self) -> tuple[int, float, np.ndarray] | None:
        """The newest frame if one is waiting, else None, without waiting."""
        with self._condition:
            latest, self._latest = self._latest, None
            self._condition.notify_all()
        return latest

    @property
    def exhausted(self) -> bool:
        """The source has ended (or failed, or was stopped) and its last frame was taken."""
        with self._condition:
            return self._finished and self._latest is None

    def signal_stop(self) -> None:
        """Ask the capture thread to end, without waiting for it (it may be inside a camera's read())."""
        with self._condition:
            self._finished = True
            self._condition.notify_all()

    def join(self, deadline: float) -> None:
        """Wait for the capture thread until `deadline` (time.perf_counter()); never started: release here."""
        if self._thread.ident is None:
            self._capture.release()
            return
        self._thread.join(timeout=max(0.0, deadline - time.perf_counter()))

    def stop(self, timeout: float = 2.0) -> None:
        self.signal_stop()
        self.join(time.perf_counter() + timeout)


def annotate(frame: np.ndarray, prediction: Prediction, fps: float, prefix: str = "",
             latency_ms: float | None = None) -> np.ndarray:
    late = "" if latency_ms is None else f" {latency_ms:.0f} ms"
    text = f"{prefix}{prediction.label} {prediction.probability:.0%}  {fps:.1f} FPS{late}"
    scale = max(0.4, frame.shape[1] / 900)
    thickness = max(1, round(scale * 2))
    (width, height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    out = frame.copy()
    cv2.rectangle(out, (0, 0), (width + 12, height + 14), (0, 0, 0), -1)
    cv2.putText(out, text, (6, height + 6), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out


VIDEO_OUTPUTS = ("annotated.mp4", "frames.csv", "frames.json")


class _Outputs:
    """Annotated video and per-frame CSV/JSON; nothing appears under its final name half-written."""

    def __init__(self, out_dir: Path, fps: float) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir, self.fps = out_dir, fps
        self.rows: list[FrameResult] = []
        self._partial = out_dir / ".annotated.partial.mp4"  # OpenCV picks the container by suffix
        self._writer: cv2.VideoWriter | None = None

    def add(self, result: FrameResult, annotated: np.ndarray) -> None:
        self.rows.append(result)
        if self._writer is None:
            height, width = annotated.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self._partial), fourcc, self.fps, (width, height))
        self._writer.write(annotated)

    def close(self, summary: VideoSummary) -> None:
        if self._writer is not None:
            self._writer.release()
            self._partial.replace(self.out_dir / "annotated.mp4")
            summary.outputs["video"] = str(self.out_dir / "annotated.mp4")
        summary.outputs["csv"] = str(self.out_dir / "frames.csv")
        summary.outputs["json"] = str(self.out_dir / "frames.json")
        with atomic_path(self.out_dir / "frames.csv") as tmp, open(tmp, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(list(FrameResult.__dataclass_fields__))
            writer.writerows(list(asdict(row).values()) for row in self.rows)
        with atomic_path(self.out_dir / "frames.json") as tmp:
            payload = {"summary": {**asdict(summary), "classified_share": summary.classified_share},
                       "frames": [asdict(row) for row in self.rows]}
            tmp.write_text(json.dumps(payload, indent=1) + "\n")
        mark_written(self.out_dir, VIDEO_OUTPUTS)

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._partial.unlink(missing_ok=True)


def classify_video(
    classifier: Classifier,
    source: str | int,
    *,
    out_dir: Path | None = None,
    max_frames: int | None = None,
    show: Callable[[np.ndarray], bool] | None = None,
    show_every: int = 1,
    realtime: bool = True,
    camera_size: tuple[int, int] | None = None,
    fourcc: str | None = None,
    fps: int | None = None,
) -> VideoSummary:
    """Classify a source live; write outputs to `out_dir` if given; `show(frame)` False stops.

    A camera is asked for `camera_size`, by default the smallest common size of its own
    aspect ratio that covers the model's resize (`camera_size_for`). Ctrl-C stops it cleanly; the summary and the
    outputs so far are kept.
    """
    check_limits(max_frames, show_every)
    if out_dir is not None:  # before the camera opens: a user's annotated.mp4 is never replaced
        refuse_to_overwrite(Path(out_dir), VIDEO_OUTPUTS, "--out")
    capture = open_source(source, classifier.preprocess.resize, camera_size, fourcc, fps, getattr(classifier, "sensor", None))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    outputs = _Outputs(Path(out_dir), fps) if out_dir is not None else None
    reader = LatestFrame(capture, realtime=realtime, paced=not is_live(source))
    run = _VideoRun(classifier, reader, outputs, show, show_every, max_frames)
    try:
        run.loop()
    except KeyboardInterrupt:
        pass
    except BaseException:
        if outputs is not None:
            outputs.discard()
        raise
    finally:
        run.reader.stop()
    summary = run.summary()
    if outputs is not None:
        outputs.close(summary)
    return summary


def check_limits(max_frames: int | None, show_every: int) -> None:
    """The run's limits, refused before any source opens (one source or several)."""
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"--max-frames must be at least 1, got {max_frames}")
    if show_every < 1:
        raise VideoError(f"--show-every must be at least 1, got {show_every}")


class _VideoRun:
    """One pass over a source: frames go into the classifier's stream, results come back in order."""

    def __init__(self, classifier: Classifier, reader: LatestFrame, outputs: _Outputs | None,
                 show: Callable[[np.ndarray], bool] | None, show_every: int, max_frames: int | None) -> None:
        self.classifier, self.reader, self.outputs = classifier, reader, outputs
        self.show, self.show_every, self.max_frames = show, show_every, max_frames
        self.in_flight: collections.deque[tuple[int, float, np.ndarray]] = collections.deque()
        self.tally = Tally()

    def frames(self) -> Iterator[np.ndarray]:
        for count, item in enumerate(self.reader.frames()):
            if self.max_frames is not None and count >= self.max_frames:
                return
            self.in_flight.append(item)  # results come back in this order: each is tied to its frame
            yield item[2]

    def loop(self) -> None:
        for predictions in self.classifier.stream(self.frames(), topk=1):
            index, captured_at, frame = self.in_flight.popleft()
            latency_ms = self.tally.add(time.perf_counter() - self.reader.started, captured_at, index)
            top = predictions[0]
            if self.outputs is None and self.show is None:
                continue
            annotated = annotate(frame, top, self.tally.recent_fps())
            if self.outputs is not None:
                self.outputs.add(FrameResult(index, round(captured_at, 4), top.label, round(top.probability, 5),
                                             round(latency_ms, 2)), annotated)
            if self.show is not None and self.tally.count % self.show_every == 0 and not self.show(annotated):
                return

    def summary(self) -> VideoSummary:
        summary = self.tally.summary(self.reader.frames_read)
        summary.error = self.reader.error
        return summary


class Tally:
    """When each result of one stream came, and how old its frame was: the stream's FPS and latency."""

    def __init__(self) -> None:
        self.done_times: list[float] = []
        self.latencies: list[float] = []
        self.last_index = -1

    @property
    def count(self) -> int:
        return len(self.done_times)

    def add(self, now: float, captured_at: float, index: int) -> float:
        """A result at `now` for frame `index`, captured at `captured_at` (seconds, the same clock); returns
        its latency in ms."""
        self.done_times.append(now)
        self.latencies.append(1e3 * (now - captured_at))
        self.last_index = index
        return self.latencies[-1]

    def recent_fps(self, window: int = 30) -> float:
        recent = self.done_times[-window:]
        return (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0

    def summary(self, frames_read: int) -> VideoSummary:
        summary = VideoSummary(frames_read=frames_read, frames_classified=self.count)
        # frames read ahead of the last result (the run ended there) were not dropped, only not reached
        reached = min(frames_read, self.last_index + 1) if self.count else 0
        summary.frames_dropped = max(0, reached - summary.frames_classified)
        if self.count > 1:
            summary.seconds = self.done_times[-1] - self.done_times[0]
            summary.fps_mean = (self.count - 1) / summary.seconds if summary.seconds else 0.0
            slowest = float(np.percentile(np.diff(self.done_times), 95))
            summary.fps_p5 = 1.0 / slowest if slowest > 0 else 0.0
        if self.latencies:
            summary.latency_ms_mean = float(np.mean(self.latencies))
            summary.latency_ms_p95 = float(np.percentile(self.latencies, 95))
        return summary


def no_window_reason() -> str | None:
    """Why no window can open here, or None: edgeres installs headless OpenCV, and a server or an ssh
    session has no display (where GUI OpenCV aborts the process instead of raising)."""
    if re.search(r"GUI:\s+NONE", cv2.getBuildInformation()):
        return "this OpenCV has no window support (opencv-python-headless; pip install opencv-python for one)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set)"
    return None


def window_show(title: str = "edgeres") -> Callable[[np.ndarray], bool]:
    """Show frames in a window; returns False once the user presses q or Esc."""
    try:
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
    except cv2.error:
        raise VideoError(
            "this OpenCV has no window support (opencv-python-headless); use --headless --out DIR, "
            "or pip install opencv-python for a window"
        ) from None

    def show(frame: np.ndarray) -> bool:
        cv2.imshow(title, frame)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)

    return show
