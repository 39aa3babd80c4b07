"""Several cameras, files or stream URLs classified at once by one model.

Each source is read in its own thread and keeps only its newest frame (`video.LatestFrame`),
so no stream builds a backlog. One inference loop takes the frames that are waiting, at most
one per stream, and classifies them together (`Classifier.predict_many`): one batch where the
artifact takes a batch (converted with --dynamic-batch), several inferences in flight where
the runtime keeps them (OpenVINO), one after the other otherwise. When inference keeps up,
a round carries one or two frames and the latency is one inference; when it does not, every
stream has a frame waiting at each round, so each stream drops frames evenly instead of one
stream starving the others.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from .artifact import atomic_path
from .runtime.classifier import Classifier
from .video import (VIDEO_OUTPUTS, FrameResult, LatestFrame, Tally, VideoError, VideoSummary, _Outputs, annotate,
                    check_limits, is_live, open_source)
from .written import mark_written, refuse_to_overwrite

MAX_STREAMS = 64  # each holds a capture thread, a decoder and a frame; more is a typo, not a deployment
STREAMS_FILE = "streams.json"
TILE_WIDTH = 480  # each stream's tile in the window's mosaic


@dataclass
class StreamsSummary:
    sources: list[str]
    streams: list[VideoSummary]
    rounds: int = 0  # passes of the loop that classified something
    frames_per_round: float = 0.0
    fps_total: float = 0.0  # results of every stream per second, from the first result to the last
    how: str = ""  # how a round's frames were classified: one batch, in flight together, one by one
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"sources": self.sources, "rounds": self.rounds, "frames_per_round": self.frames_per_round,
                "fps_total": self.fps_total, "how": self.how, "outputs": self.outputs,
                "streams": [{**asdict(s), "classified_share": s.classified_share} for s in self.streams]}


def stream_folder(index: int) -> str:
    """Where stream `index` (0-based) writes its annotated video and per-frame results under --out."""
    return f"stream-{index + 1}"


def classify_streams(
    classifier: Classifier,
    sources: Sequence[str | int],
    *,
    out_dir: Path | None = None,
    max_frames: int | None = None,
    show: Callable[[np.ndarray], bool] | None = None,
    show_every: int = 1,
    realtime: bool = True,
    camera_size: tuple[int, int] | None = None,
    fourcc: str | None = None,
    fps: int | None = None,
) -> StreamsSummary:
    """Classify every source at once until each ends (a file) or `max_frames` of it are classified;
    `show(mosaic)` returning False, or Ctrl-C, ends all of them with the summary and outputs so far.

    With `out_dir`, stream i writes annotated.mp4, frames.csv and frames.json to
    OUT/stream-i (counting from 1) and the summary of all to OUT/streams.json.
    """
    _check(sources, max_frames, show_every)
    if out_dir is not None:  # before any camera opens: nothing of the user's is replaced
        out_dir = Path(out_dir)
        refuse_to_overwrite(out_dir, (STREAMS_FILE,), "--out")
        for index in range(len(sources)):
            refuse_to_overwrite(out_dir / stream_folder(index), VIDEO_OUTPUTS, "--out")
    ready = threading.Event()
    readers: list[LatestFrame] = []
    outputs: list[_Outputs] | None = None
    run: _StreamsRun | None = None
    try:
        for source in sources:  # every source opened before any plays, so none loses frames to the others' opening
            capture = open_source(source, classifier.preprocess.resize, camera_size, fourcc, fps,
                                  getattr(classifier, "sensor", None))
            readers.append(LatestFrame(capture, realtime=realtime, paced=not is_live(source), on_change=ready.set,
                                       start=False))
        outputs = None if out_dir is None else [
            _Outputs(out_dir / stream_folder(i), reader.fps) for i, reader in enumerate(readers)]
        run = _StreamsRun(classifier, readers, ready, outputs, show, show_every, max_frames)
        for reader in readers:
            reader.start()
        run.loop()
    except KeyboardInterrupt:
        if run is None:  # while opening: nothing ran, nothing to summarise
            raise
    except BaseException:
        for output in outputs or ():
            output.discard()
        raise
    finally:
        _stop(readers)
    summary = run.summary([str(source) for source in sources])
    if out_dir is not None:
        _write(out_dir, outputs, summary)
    return summary


def _stop(readers: list[LatestFrame], timeout: float = 2.0) -> None:
    """Every capture thread asked to end at once, then waited for against one deadline."""
    for reader in readers:
        reader.signal_stop()
    deadline = time.perf_counter() + timeout
    for reader in readers:
        reader.join(deadline)


def _check(sources: Sequence[str | int], max_frames: int | None, show_every: int) -> None:
    if not sources:
        raise VideoError("give at least one --source")
    if len(sources) > MAX_STREAMS:
        raise VideoError(f"{len(sources)} sources: at most {MAX_STREAMS} streams are classified at once; "
                         "run several edgeres video processes for more")
    check_limits(max_frames, show_every)


def _write(out_dir: Path, outputs: list[_Outputs], summary: StreamsSummary) -> None:
    for output, stream in zip(outputs, summary.streams):
        output.close(stream)
    summary.outputs["streams"] = str(out_dir / STREAMS_FILE)
    with atomic_path(out_dir / STREAMS_FILE) as tmp:
        tmp.write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    mark_written(out_dir, (STREAMS_FILE,))


class _StreamsRun:
    """The inference loop: the frames waiting, at most one per stream, classified together."""

    def __init__(self, classifier: Classifier, readers: list[LatestFrame], ready: threading.Event,
                 outputs: list[_Outputs] | None, show: Callable[[np.ndarray], bool] | None, show_every: int,
                 max_frames: int | None) -> None:
        self.classifier, self.readers, self.ready, self.outputs = classifier, readers, ready, outputs
        self.show, self.show_every, self.max_frames = show, show_every, max_frames
        self.tallies = [Tally() for _ in readers]
        self.finished = [False] * len(readers)
        self.tiles: list[np.ndarray | None] = [None] * len(readers)
        self.rounds = self.classified = 0
        self.first_result = self.last_result = 0.0

    def loop(self) -> None:
        while not all(self.finished):
            self.ready.wait(timeout=0.5)
            self.ready.clear()  # before taking: a frame that arrives after this sets it again
            waiting = self._waiting()
            if waiting:
                predictions = self.classifier.predict_many([frame for _, (_, _, frame) in waiting], topk=1)
                now = time.perf_counter()  # one time for the round: results later in it are not older
                self._count(now, len(waiting))
                for (stream, item), top in zip(waiting, predictions):
                    self._result(stream, item, top[0], now)
            # shown on a quiet wake-up too, so q still ends a run whose streams have all stalled
            if self.show is not None and (not waiting or self.rounds % self.show_every == 0):
                if not self.show(self._mosaic()):
                    return

    def _count(self, now: float, frames: int) -> None:
        self.first_result = self.first_result or now
        self.last_result = now
        self.rounds += 1
        self.classified += frames

    def _waiting(self) -> list[tuple[int, tuple[int, float, np.ndarray]]]:
        waiting = []
        for stream, reader in enumerate(self.readers):
            if self.finished[stream]:
                continue
            item = reader.take()
            if item is not None:
                waiting.append((stream, item))
            elif reader.exhausted:
                self.finished[stream] = True
        return waiting

    def _result(self, stream: int, item: tuple[int, float, np.ndarray], top, now: float) -> None:
        index, captured_at, frame = item
        reader, tally = self.readers[stream], self.tallies[stream]
        latency_ms = tally.add(now - reader.started, captured_at, index)
        if self.max_frames is not None and tally.count >= self.max_frames:
            self.finished[stream] = True
            reader.signal_stop()  # not joined here: a camera inside read() must not hold up the others
        if self.outputs is None and self.show is None:
            return
        annotated = annotate(frame, top, tally.recent_fps(), prefix=f"#{stream + 1} ", latency_ms=latency_ms)
        if self.outputs is not None:
            self.outputs[stream].add(FrameResult(index, round(captured_at, 4), top.label, round(top.probability, 5),
                                                 round(latency_ms, 2)), annotated)
        self.tiles[stream] = annotated

    def _mosaic(self) -> np.ndarray:
        """Every stream's latest annotated frame, fitted into a 4:3 tile (black until its first), on a grid."""
        height = TILE_WIDTH * 3 // 4
        columns = math.ceil(math.sqrt(len(self.tiles)))
        rows = math.ceil(len(self.tiles) / columns)
        mosaic = np.zeros((rows * height, columns * TILE_WIDTH, 3), np.uint8)
        for i, tile in enumerate(self.tiles):
            if tile is None:
                continue
            scale = min(TILE_WIDTH / tile.shape[1], height / tile.shape[0])
            width, tall = max(1, round(tile.shape[1] * scale)), max(1, round(tile.shape[0] * scale))
            row, column = divmod(i, columns)
            top, left = row * height + (height - tall) // 2, column * TILE_WIDTH + (TILE_WIDTH - width) // 2
            mosaic[top:top + tall, left:left + width] = cv2.resize(tile, (width, tall), interpolation=cv2.INTER_AREA)
        return mosaic

    def summary(self, sources: list[str]) -> StreamsSummary:
        streams = []
        for tally, reader in zip(self.tallies, self.readers):
            streams.append(tally.summary(reader.frames_read))
            streams[-1].error = reader.error
        span = self.last_result - self.first_result
        return StreamsSummary(sources, streams, self.rounds, self.classified / self.rounds if self.rounds else 0.0,
                              (self.classified - 1) / span if span > 0 else 0.0,
                              self.classifier.how_many_at_once(len(self.readers)))
