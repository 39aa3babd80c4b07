"""Several streams at once: each result belongs to its own stream's frame, every stream is served,
and nothing of the user's is replaced."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeres.errors import EdgeresError
from edgeres.runtime.classifier import Classifier
from edgeres.streams import MAX_STREAMS, STREAMS_FILE, classify_streams
from edgeres.video import VideoError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def classifier(converted) -> Classifier:
    return Classifier(converted("x86", "int8").path)


@pytest.fixture(scope="module")
def other_clip(digits, tmp_path_factory) -> tuple[Path, list[int]]:
    """A second clip with other digits in another order: a result given to the wrong stream shows."""
    from edgeres.demo import write_clip

    path = tmp_path_factory.mktemp("video") / "other.mp4"
    return path, write_clip(digits.test_images()[11::41][::-1], path, frames_per_image=4)


@pytest.fixture(scope="module")
def reversed_clip(digits, tmp_path_factory) -> tuple[Path, list[int]]:
    from edgeres.demo import write_clip

    path = tmp_path_factory.mktemp("video") / "reversed.mp4"
    return path, write_clip(digits.test_images()[::37][::-1], path, frames_per_image=5)


def one_by_one(classifier: Classifier, path: Path) -> list[str]:
    """Each frame of the file classified on its own: what its stream's results must say."""
    import cv2

    capture, labels = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return labels
        labels.append(classifier.predict(frame, topk=1)[0].label)


@pytest.mark.parametrize("target, options, how", [
    ("x86", {}, "in flight together"),  # OpenVINO's requests in flight (THROUGHPUT)
    ("onnx", {"dynamic_batch": True}, "one batch"),  # ONNX Runtime, a batch of the waiting frames
    ("onnx", {}, "one by one"),  # a static batch-1 model
    ("rpi", {}, "one by one"),  # TFLite
])
def test_every_frame_of_every_stream_goes_to_its_own_results(converted, clip, other_clip, reversed_clip, target: str,
                                                           options: dict, how: str, tmp_path: Path) -> None:
    classifier = Classifier(converted(target, "int8", **options).path)
    clips = [clip, other_clip, reversed_clip]
    summary = classify_streams(classifier, [str(path) for path, _ in clips], out_dir=tmp_path, realtime=False)
    assert len(summary.streams) == 3 and summary.how == how
    expected = [one_by_one(classifier, path) for path, _ in clips]
    # the clips' answers differ frame by frame, so a result given to the wrong stream shows
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert sum(x != y for x, y in zip(expected[a], expected[b])) >= min(len(expected[a]), len(expected[b])) / 2
    for i, ((path, truth), stream) in enumerate(zip(clips, summary.streams)):
        assert stream.frames_read == stream.frames_classified == len(truth)  # offline: every frame
        rows = json.loads((tmp_path / f"stream-{i + 1}" / "frames.json").read_text())["frames"]
        assert [row["index"] for row in rows] == list(range(len(truth)))
        # each result is its own frame's, as classified alone (batched arithmetic may differ in a near tie)
        assert sum(row["label"] == label for row, label in zip(rows, expected[i])) >= 0.97 * len(rows)
        assert (tmp_path / f"stream-{i + 1}" / "annotated.mp4").is_file()
    # the streams' waiting frames went in together
    assert summary.frames_per_round > 1.5 and summary.rounds < sum(len(t) for _, t in clips)
    assert 0 < summary.fps_total
    record = json.loads((tmp_path / STREAMS_FILE).read_text())
    assert [s["frames_classified"] for s in record["streams"]] == [len(t) for _, t in clips]


class SlowClassifier:
    """The real classifier, 40 ms slower per frame: more frames arrive than it can classify."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier, self.preprocess = classifier, classifier.preprocess

    def predict_many(self, frames, topk: int = 5):
        time.sleep(0.04 * len(frames))
        return self.classifier.predict_many(frames, topk)

    def how_many_at_once(self, count: int) -> str:
        return self.classifier.how_many_at_once(count)


def test_when_inference_falls_behind_every_stream_drops_evenly(classifier, clip, reversed_clip) -> None:
    """Three streams at 30 FPS, about 8 rounds a second: each stream gets a frame in every round, none starves."""
    summary = classify_streams(SlowClassifier(classifier), [str(clip[0]), str(reversed_clip[0]), str(clip[0])],
                               realtime=True)
    classified = [stream.frames_classified for stream in summary.streams]
    assert all(stream.frames_read == len(clip[1]) for stream in summary.streams)
    assert all(stream.frames_dropped > len(clip[1]) / 3 for stream in summary.streams), classified
    assert max(classified) - min(classified) <= 2, classified
    assert summary.frames_per_round > 2.5  # each round takes a frame from every stream


def test_a_source_failing_while_read_ends_that_stream_only(monkeypatch, classifier, clip, tmp_path: Path) -> None:
    import edgeres.streams as streams

    class FailingCapture:
        """A camera whose driver fails after three frames."""

        def __init__(self) -> None:
            self.reads, self.released = 0, False

        def get(self, prop: int) -> float:
            return 30.0

        def read(self):
            self.reads += 1
            if self.reads > 3:
                raise RuntimeError("USB device disconnected")
            return True, np.full((480, 640, 3), 128, np.uint8)

        def release(self) -> None:
            self.released = True

    failing, real_open = FailingCapture(), streams.open_source
    monkeypatch.setattr(streams, "open_source", lambda source, *a: failing if source == "fake" else real_open(source, *a))
    summary = classify_streams(classifier, [str(clip[0]), "fake"], realtime=False, out_dir=tmp_path)
    assert summary.streams[0].frames_classified == len(clip[1])  # the other stream ran to its end
    assert summary.streams[1].frames_classified == 3 and "USB device disconnected" in summary.streams[1].error
    assert failing.released
    record = json.loads((tmp_path / STREAMS_FILE).read_text())
    assert "USB device disconnected" in record["streams"][1]["error"]


def test_max_frames_ends_each_stream_and_the_mosaic_shows_all(classifier, clip, other_clip) -> None:
    shown = []

    def show(mosaic) -> bool:
        shown.append(mosaic.shape)
        return True

    summary = classify_streams(classifier, [str(clip[0]), str(other_clip[0]), str(clip[0])], max_frames=7,
                               realtime=False, show=show)
    assert [s.frames_classified for s in summary.streams] == [7, 7, 7]
    assert shown and shown[-1] == (2 * 360, 2 * 480, 3)  # 4:3 tiles 480 wide, two columns, two rows


def test_the_window_closing_ends_every_stream(classifier, clip, other_clip) -> None:
    calls = []
    summary = classify_streams(classifier, [str(clip[0]), str(other_clip[0])], realtime=False,
                               show=lambda mosaic: calls.append(1) or len(calls) < 3)
    assert len(calls) == 3 and sum(s.frames_classified for s in summary.streams) < len(clip[1])


def test_a_source_that_cannot_be_opened_stops_the_others(classifier, clip) -> None:
    before = threading.active_count()
    with pytest.raises(VideoError, match="does not exist"):
        classify_streams(classifier, [str(clip[0]), "/no/such/video.mp4"])
    assert threading.active_count() == before  # the first stream's capture thread was stopped


@pytest.mark.parametrize("sources, options, message", [
    ([], {}, "give at least one --source"),
    (["clip"] * (MAX_STREAMS + 1), {}, f"at most {MAX_STREAMS} streams"),
    (["clip", "clip"], {"max_frames": 0}, "--max-frames must be at least 1"),
    (["clip", "clip"], {"show_every": 0}, "--show-every must be at least 1"),
])
def test_bad_requests(classifier, clip, sources, options, message) -> None:
    with pytest.raises(VideoError, match=message):
        classify_streams(classifier, [str(clip[0]) if s == "clip" else s for s in sources], **options)


def test_a_users_files_under_out_are_never_replaced(classifier, clip, tmp_path: Path) -> None:
    (tmp_path / "stream-2").mkdir()
    theirs = tmp_path / "stream-2" / "annotated.mp4"
    theirs.write_bytes(b"the user's own video")
    with pytest.raises(EdgeresError, match="which edgeres did not write"):
        classify_streams(classifier, [str(clip[0]), str(clip[0])], out_dir=tmp_path, max_frames=2)
    assert theirs.read_bytes() == b"the user's own video" and not (tmp_path / "stream-1").exists()
    # a second run over its own outputs is allowed
    out = tmp_path / "runs"
    for _ in range(2):
        classify_streams(classifier, [str(clip[0]), str(clip[0])], out_dir=out, max_frames=2, realtime=False)
    assert json.loads((out / STREAMS_FILE).read_text())["streams"][1]["frames_classified"] == 2


def test_cli_several_sources(monkeypatch, capsys, converted, clip, other_clip, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    artifact = converted("x86", "int8").path
    code, out, err = run_cli(monkeypatch, capsys, "video", artifact, "--source", clip[0], "--source", other_clip[0],
                             "--headless", "--out", tmp_path, "--max-frames", "4")
    assert code == 0, err
    assert "on 2 streams" in out and "frames classified per second in all" in out
    assert (tmp_path / "stream-1" / "frames.csv").is_file() and (tmp_path / "stream-2" / "frames.csv").is_file()
