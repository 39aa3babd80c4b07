"""Several cameras, files or stream URLs classified at once by one model.

Each source is read in its own thread and keeps only its newest frame (`video.LatestFrame`),
so no stream builds a backlog. One inference loop takes the frames that are waiting, one
per stream, and classifies them together: one batch where the runtime takes several inputs
at once (ONNX Runtime, OpenVINO with a dynamic batch, TensorRT), one after the other where
it takes one (TFLite). When inference keeps up, batches are small and latency is one
inference; when it does not, every stream has a frame waiting each time, so batches fill up
and each stream drops frames evenly instead of one stream starving the others.
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
                    is_live, open_source)
from .written import mark_written, refuse_to_overwrite

MAX_STREAMS = 64  # each holds a capture thread, a decoder and a frame; more is a typo, not a deployment
STREAMS_FILE = "streams.json"
TILE_WIDTH = 480  # each stream's tile in the window's mosaic


@dataclass
class StreamsSummary:
    sources: list[str]
    streams: list[VideoSummary]
    batches: int = 0  # inference calls of the loop
    frames_per_batch: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def fps_total(self) -> float:
        return sum(stream.fps_mean for stream in self.streams)

    def to_dict(self) -> dict:
        return {"sources": self.sources, "batches": self.batches, "frames_per_batch": self.frames_per_batch,
                "fps_total": self.fps_total, "outputs": self.outputs,
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
    try:
        for source in sources:
            capture = open_source(source, classifier.preprocess.resize, camera_size, fourcc, fps)
            readers.append(LatestFrame(capture, realtime=realtime, paced=not is_live(source), on_change=ready.set))
    except BaseException:
        for reader in readers:
            reader.stop()
        raise
    outputs = None if out_dir is None else [
        _Outputs(out_dir / stream_folder(i), reader.fps) for i, reader in enumerate(readers)]
    run = _StreamsRun(classifier, readers, ready, outputs, show, show_every, max_frames)
    try:
        run.loop()
    except KeyboardInterrupt:
        pass
    except BaseException:
        for output in outputs or ():
            output.discard()
        raise
    finally:
        for reader in readers:
            reader.stop()
    summary = run.summary([str(source) for source in sources])
    if out_dir is not None:
        _write(out_dir, outputs, summary)
    return summary


def _check(sources: Sequence[str | int], max_frames: int | None, show_every: int) -> None:
    if not sources:
        raise VideoError("give at least one --source")
    if len(sources) > MAX_STREAMS:
        raise VideoError(f"{len(sources)} sources: at most {MAX_STREAMS} streams are classified at once; "
                         "run several edgeres video processes for more")
    if max_frames is not None and max_frames < 1:
        raise VideoError(f"--max-frames must be at least 1, got {max_frames}")
    if show_every < 1:
        raise VideoError(f"--show-every must be at least 1, got {show_every}")


def _write(out_dir: Path, outputs: list[_Outputs], summary: StreamsSummary) -> None:
    for output, stream in zip(outputs, summary.streams):
        output.close(stream)
    summary.outputs["streams"] = str(out_dir / STREAMS_FILE)
    with atomic_path(out_dir / STREAMS_FILE) as tmp:
        tmp.write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
    mark_written(out_dir, (STREAMS_FILE,))


class _StreamsRun:
    """The inference loop: the frames waiting, one per stream, classified together."""

    def __init__(self, classifier: Classifier, readers: list[LatestFrame], ready: threading.Event,
                 outputs: list[_Outputs] | None, show: Callable[[np.ndarray], bool] | None, show_every: int,
                 max_frames: int | None) -> None:
        self.classifier, self.readers, self.ready, self.outputs = classifier, readers, ready, outputs
        self.show, self.show_every, self.max_frames = show, show_every, max_frames
        self.tallies = [Tally() for _ in readers]
        self.finished = [False] * len(readers)
        self.tiles: list[np.ndarray | None] = [None] * len(readers)
        self.batches = self.batched = 0

    def loop(self) -> None:
        while not all(self.finished):
            self.ready.wait(timeout=0.5)
            self.ready.clear()  # before taking: a frame that arrives after this sets it again
            waiting = self._waiting()
            if not waiting:
                continue
            predictions = self.classifier.predict_batch([frame for _, (_, _, frame) in waiting], topk=1)
            self.batches += 1
            self.batched += len(waiting)
            for (stream, item), top in zip(waiting, predictions):
                self._result(stream, item, top[0])
            if self.show is not None and self.batches % self.show_every == 0 and not self.show(self._mosaic()):
                return

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

    def _result(self, stream: int, item: tuple[int, float, np.ndarray], top) -> None:
        index, captured_at, frame = item
        reader, tally = self.readers[stream], self.tallies[stream]
        latency_ms = tally.add(time.perf_counter() - reader.started, captured_at)
        if self.max_frames is not None and tally.count >= self.max_frames:
            self.finished[stream] = True
            reader.stop()
        if self.outputs is None and self.show is None:
            return
        annotated = annotate(frame, top, tally.recent_fps(), prefix=f"#{stream + 1} ")
        if self.outputs is not None:
            self.outputs[stream].add(FrameResult(index, round(captured_at, 4), top.label, round(top.probability, 5),
                                                 round(latency_ms, 2)), annotated)
        self.tiles[stream] = annotated

    def _mosaic(self) -> np.ndarray:
        """Every stream's latest annotated frame, scaled to one width, on a grid (black until its first)."""
        shapes = [tile.shape for tile in self.tiles if tile is not None]
        height = round(TILE_WIDTH * shapes[0][0] / shapes[0][1]) if shapes else TILE_WIDTH * 3 // 4
        columns = math.ceil(math.sqrt(len(self.tiles)))
        rows = math.ceil(len(self.tiles) / columns)
        mosaic = np.zeros((rows * height, columns * TILE_WIDTH, 3), np.uint8)
        for i, tile in enumerate(self.tiles):
            if tile is not None:
                row, column = divmod(i, columns)
                mosaic[row * height:(row + 1) * height, column * TILE_WIDTH:(column + 1) * TILE_WIDTH] = cv2.resize(
                    tile, (TILE_WIDTH, height), interpolation=cv2.INTER_AREA)
        return mosaic

    def summary(self, sources: list[str]) -> StreamsSummary:
        streams = [tally.summary(reader.frames_read) for tally, reader in zip(self.tallies, self.readers)]
        return StreamsSummary(sources, streams, self.batches, self.batched / self.batches if self.batches else 0.0)
