"""Several streams at once: each result belongs to its own stream's frame, every stream is served,
and nothing of the user's is replaced."""

from __future__ import annotations

import json
import threading
from pathlib import Path

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


def one_by_one(classifier: Classifier, path: Path) -> list[str]:
    """Each frame of the file classified on its own: what its stream's results must say."""
    import cv2

    capture, labels = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            return labels
        labels.append(classifier.predict(frame, topk=1)[0].label)


@pytest.mark.parametrize("target", ["x86", "onnx", "rpi"])  # OpenVINO, ONNX Runtime (batches), TFLite (one by one)
def test_every_frame_of_every_stream_goes_to_its_own_results(converted, clip, other_clip, target: str,
                                                           tmp_path: Path) -> None:
    classifier = Classifier(converted(target, "int8").path)
    clips = [clip, other_clip, clip]
    summary = classify_streams(classifier, [str(path) for path, _ in clips], out_dir=tmp_path, realtime=False)
    assert len(summary.streams) == 3
    expected = [one_by_one(classifier, path) for path, _ in clips]
    # the clips' answers differ frame by frame, so a result given to the wrong stream shows
    assert sum(a != b for a, b in zip(expected[0], expected[1])) >= len(expected[1]) / 2
    for i, ((path, truth), stream) in enumerate(zip(clips, summary.streams)):
        assert stream.frames_read == stream.frames_classified == len(truth)  # offline: every frame
        rows = json.loads((tmp_path / f"stream-{i + 1}" / "frames.json").read_text())["frames"]
        assert [row["index"] for row in rows] == list(range(len(truth)))
        # each result is its own frame's, as classified alone (batched arithmetic may differ in a near tie)
        assert sum(row["label"] == label for row, label in zip(rows, expected[i])) >= 0.97 * len(rows)
        assert (tmp_path / f"stream-{i + 1}" / "annotated.mp4").is_file()
    # the streams' waiting frames went in together
    assert summary.frames_per_batch > 1.5 and summary.batches < sum(len(t) for _, t in clips)
    record = json.loads((tmp_path / STREAMS_FILE).read_text())
    assert [s["frames_classified"] for s in record["streams"]] == [len(t) for _, t in clips]


def test_real_time_streams_drop_instead_of_queueing(classifier, clip, other_clip) -> None:
    summary = classify_streams(classifier, [str(clip[0]), str(other_clip[0])], realtime=True)
    for (_, truth), stream in zip((clip, other_clip), summary.streams):
        assert stream.frames_read == len(truth)
        assert stream.frames_classified + stream.frames_dropped == stream.frames_read
        assert stream.frames_classified > 0 and stream.latency_ms_mean > 0


def test_max_frames_ends_each_stream_and_the_mosaic_shows_all(classifier, clip, other_clip) -> None:
    shown = []

    def show(mosaic) -> bool:
        shown.append(mosaic.shape)
        return True

    summary = classify_streams(classifier, [str(clip[0]), str(other_clip[0]), str(clip[0])], max_frames=7,
                               realtime=False, show=show)
    assert [s.frames_classified for s in summary.streams] == [7, 7, 7]
    assert shown and shown[-1] == (2 * 360, 2 * 480, 3)  # 640x480 tiles at 480 wide, two columns, two rows


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
    assert "on 2 streams" in out and "frames per second in all" in out
    assert (tmp_path / "stream-1" / "frames.csv").is_file() and (tmp_path / "stream-2" / "frames.csv").is_file()
