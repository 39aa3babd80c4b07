"""`Classifier`: one API over every artifact edgeres makes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..artifact import ArtifactRecord, check_companions, read_sidecar, sidecar_path
from ..errors import ArtifactError, EdgeresError, FrameError
from ..metrics import softmax
from ..preprocess import Preprocess
from . import open_backend, resolve_artifact
from .base import check_threads


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    probability: float


class Classifier:
    """Classify OpenCV BGR frames with any edgeres artifact.

    >>> clf = Classifier("out/resnet18_int8.onnx")
    >>> clf.predict(cv2.imread("cat.jpg"))[0].label

    The backend is chosen from the artifact's suffix; preprocessing and labels come
    from the edgeres record inside the artifact (or its `.edgeres.json` sidecar).
    Frames must be uint8; grayscale (HxW, HxWx1) frames are repeated to three
    channels and BGRA frames lose their alpha channel.

    `precision` picks a faster float mode the runtime and CPU offer (OpenVINO: "bf16" on
    CPUs with AVX512-BF16 or AMX, "fp16" where the CPU computes in fp16); by default every
    artifact runs in the mode it was verified in at conversion (fp32 arithmetic), whatever
    the host would pick. An unavailable mode is a DeviceError that names the ones there are.
    """

    def __init__(self, path: str | Path, threads: int | None = None, device: str | None = None,
                 tensorrt_engine: bool = False, precision: str | None = None) -> None:
        self.path = resolve_artifact(Path(path))
        if tensorrt_engine:  # a jetson ONNX: build its engine once, beside it, and run that
            self.path = _engine_for(self.path)
        check_threads(threads)
        sidecar = read_sidecar(self.path) if sidecar_path(self.path).exists() else None
        if sidecar:  # before a runtime loads a swapped file beside it (and may compile it)
            check_companions(self.path, sidecar)
        self._backend = open_backend(self.path, threads, device, precision)
        self.record = self._find_record(sidecar)
        if self.record is not sidecar:  # the artifact's own record, its companions not yet checked
            check_companions(self.path, self.record)
        try:
            self.preprocess = Preprocess.from_dict(self.record.preprocess)
        except EdgeresError as error:
            raise ArtifactError(f"{self.path.name}: {error}") from None
        self.labels = list(self.record.labels)
        self.backend_name = self._backend.name
        self._check_record_against_model()

    @property
    def backend_class(self) -> type:
        """The runtime backend class that opened the artifact (chosen by suffix and content)."""
        return type(self._backend)

    @property
    def sensor(self):
        """The backend where the network runs on the camera's own sensor (the IMX500), else None: such a
        classifier takes only frames that camera captured, each carrying the scores the sensor gave it
        (`edgeres.cameras.PicameraCapture` with this sensor reads them)."""
        return self._backend if getattr(self._backend, "on_sensor", False) else None

    @property
    def execution_precision(self) -> str:
        """What the float layers run in, as the runtime reports it (backends without modes: the artifact's precision)."""
        return self._backend.execution_precision or self.record.precision

    def _check_record_against_model(self) -> None:
        """One inference on a blank frame: the record's input must fit the model, its labels the outputs.

        A record that was edited or belongs to another model would otherwise fail later
        as a runtime's own traceback, or silently pair labels with the wrong outputs.
        """
        if self.sensor is not None:  # it runs only its own camera's frames: checked on each (_sensor_logits)
            return
        spec = self.preprocess
        blank = np.zeros((spec.crop, spec.crop, 3), np.uint8)
        try:
            outputs = self._backend.run(spec(blank)[None])
        except EdgeresError:
            raise
        except Exception as error:  # each runtime raises its own types for a wrong input
            detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ArtifactError(
                f"{self.path.name}: its record's preprocessing gives inputs of shape {spec.input_shape} "
                f"{spec.dtype} ({spec.layout}), which the model refuses ({detail}); the record does not "
                "belong to this model: convert it again"
            ) from None
        if outputs.ndim != 2 or outputs.shape[1] != len(self.labels):
            raise ArtifactError(
                f"{self.path.name}: the model gives {outputs.shape[-1]} outputs but its record has "
                f"{len(self.labels)} labels; the record does not belong to this model: convert it again"
            )

    def _find_record(self, sidecar: ArtifactRecord | None) -> ArtifactRecord:
        embedded = self._backend.embedded_record()
        if embedded and sidecar:
            for field_name in ("preprocess", "labels"):
                if getattr(embedded, field_name) != getattr(sidecar, field_name):
                    raise ArtifactError(
                        f"{sidecar_path(self.path).name} and the record inside {self.path.name} disagree on "
                        f"{field_name}; one was edited: delete the sidecar (the artifact's own record is used) "
                        "or convert again"
                    )
        record = embedded or sidecar
        if record is None:
            raise ArtifactError(
                f"{self.path.name} carries no edgeres record and has no {sidecar_path(self.path).name} "
                "beside it; convert it with `edgeres convert` so its preprocessing and labels travel with it"
            )
        return record

    def logits(self, frame: np.ndarray) -> np.ndarray:
        """Float32 logits (classes,) for one BGR frame."""
        if self.sensor is not None:
            return self._finite(self._sensor_logits(frame))[0]
        return self._finite(self._backend.run(self.preprocess(frame)[None]))[0]

    def logits_batch(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        if self.sensor is not None and len(frames):
            return self._finite(np.concatenate([self._sensor_logits(frame) for frame in frames]))
        inputs = self.preprocess.batch(frames) if len(frames) else None
        if inputs is None:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.logits_of_inputs(inputs)

    def logits_of_inputs(self, inputs: np.ndarray) -> np.ndarray:
        """Logits for model inputs already made by `self.preprocess` (N, ...), in as many runs as the
        artifact's batch allows: for a server whose preprocessing is a step of its own."""
        expected = self.preprocess.input_shape[1:]
        if inputs.ndim != 4 or inputs.shape[1:] != expected or inputs.dtype != np.dtype(self.preprocess.dtype):
            raise FrameError(f"{self.path.name} takes inputs of shape (N, {', '.join(map(str, expected))}) "
                             f"{self.preprocess.dtype}, got {inputs.shape} {inputs.dtype}: make them with its "
                             "record's preprocessing")
        step = self._backend.max_batch or len(inputs)
        return self._finite(np.concatenate([self._backend.run(inputs[i : i + step])
                                            for i in range(0, len(inputs), step)]))

    def predict(self, frame: np.ndarray, topk: int = 5) -> list[Prediction]:
        """The `topk` most probable classes for one BGR frame, most probable first."""
        return self._top(self.logits(frame), topk)

    def predict_batch(self, frames: Sequence[np.ndarray], topk: int = 5) -> list[list[Prediction]]:
        return [self._top(row, topk) for row in self.logits_batch(frames)]

    def predict_many(self, frames: Sequence[np.ndarray], topk: int = 5) -> list[list[Prediction]]:
        """Several frames at once, the fastest way this artifact's runtime has: one batch where the
        artifact takes one (--dynamic-batch), several inferences in flight where the runtime keeps
        them (OpenVINO), else one after the other."""
        if self.how_many_at_once(len(frames)) == "one batch":
            return self.predict_batch(frames, topk)
        return list(self.stream(frames, topk))

    def how_many_at_once(self, count: int) -> str:
        """How `predict_many` classifies `count` frames: one batch, in flight together, or one by one."""
        largest = self._backend.max_batch
        if count <= 1 or largest is None or largest >= count:
            return "one batch"
        return "in flight together" if hasattr(self._backend, "stream") else "one by one"

    def stream(self, frames: Iterable[np.ndarray], topk: int = 5) -> Iterator[list[Prediction]]:
        """Predictions for each frame of a stream, in frame order.

        Backends with a streaming mode (OpenVINO) keep several frames in flight, so
        preprocessing of one frame overlaps inference of others; the rest go one by one.
        """
        inputs = (self.preprocess(frame) for frame in frames)
        if self.sensor is not None:
            rows = (self._sensor_logits(frame)[0] for frame in frames)
        elif hasattr(self._backend, "stream"):
            rows = self._backend.stream(inputs)
        else:
            rows = (self._backend.run(item[None])[0] for item in inputs)
        for row in rows:
            yield self._top(self._finite(row), topk)

    def _sensor_logits(self, frame: np.ndarray) -> np.ndarray:
        """(1, classes): what the sensor's network gave for `frame`, which must be a frame its camera captured."""
        logits = getattr(frame, "sensor_logits", None)
        if logits is None:
            raise FrameError(f"{self.path.name} runs on the IMX500 sensor, which classifies only the frames it "
                             "captures itself: read them with `edgeres video ARTIFACT --source picamera` (in Python: "
                             "edgeres.cameras.PicameraCapture with this classifier's sensor)")
        logits = np.asarray(logits, np.float32).reshape(1, -1)
        if logits.shape[1] != len(self.labels):
            raise ArtifactError(f"the IMX500 gave {logits.shape[1]} outputs but {self.path.name}'s record has "
                                f"{len(self.labels)} labels: the sensor runs another network; close every other "
                                "program using the camera and open the artifact again")
        return logits

    def close(self) -> None:
        """Stop what the runtime started beside this process (a simulator's process); also on `with`'s exit."""
        close = getattr(self._backend, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Classifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _finite(self, logits: np.ndarray) -> np.ndarray:
        """Logits a probability can be made of: a NaN or inf score is the model's failure, never an answer."""
        if not np.isfinite(logits).all():
            raise ArtifactError(f"{self.path.name} gave non-finite scores (NaN or inf) for this input: its weights "
                                "or its runtime are broken; run `edgeres verify` on it, or convert it again")
        return logits

    def _top(self, logits: np.ndarray, topk: int) -> list[Prediction]:
        if topk < 1:
            raise EdgeresError(f"topk must be at least 1, got {topk}")
        probabilities = softmax(logits)
        count = min(topk, len(probabilities))
        candidates = np.argpartition(-probabilities, count - 1)[:count]
        order = candidates[np.argsort(-probabilities[candidates], kind="stable")]
        return [Prediction(self.labels[i], int(i), float(probabilities[i])) for i in order]

    def __repr__(self) -> str:
        r = self.record
        return f"Classifier({str(self.path)!r}, backend={self.backend_name}, {r.arch} {r.precision}, {len(self.labels)} classes)"


def _engine_for(onnx_path: Path) -> Path:
    from ..artifact import read_sidecar, sha256_of
    from ..engine import build_engine, engine_path_for

    engine = engine_path_for(onnx_path)
    record = read_sidecar(engine) if engine.is_file() else None
    built_from = (record.quantization or {}).get("engine", {}).get("onnx_sha256") if record else None
    if built_from is None or built_from != sha256_of(onnx_path):
        build_engine(onnx_path, engine)
    return engine

