"""Talking to a served edgeres repository over KServe's v2 protocol (tritonclient, HTTP or gRPC).

`ServedModel` sends raw BGR frames (the `NAME_frame` ensemble) or encoded images (`NAME`) and gets
logits or Triton's classification answers (`score:index:label`). A request the server never answered
(refused or cut connection: a restart) is sent again, up to `retries` times; classification is
idempotent, so a retried request cannot count twice. `check_served` runs the set's golden frames
through a served model and judges them by the artifact's own rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ServingError
from .repository import FRAME, GOLDEN_FILE, IMAGE, LOGITS, RECORD_FILE, REPOSITORY

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class Classified:
    label: str
    index: int
    score: float  # Triton's classification score: the logit


class ServedModel:
    def __init__(self, url: str, name: str, protocol: str = "http", timeout: float = 60.0, retries: int = 0,
                 retry_wait: float = 0.5) -> None:
        if protocol not in PROTOCOLS:
            raise ServingError(f"protocol must be http or grpc, got {protocol!r}")
        self.url, self.name, self.protocol = url, name, protocol
        if "://" in url:
            raise ServingError(f"give the server as host:port, without a scheme: {url.split('://', 1)[1]!r}, "
                               f"not {url!r}")
        self.retries, self.retry_wait, self.timeout = retries, retry_wait, timeout
        self.retried = 0  # sends repeated after the server did not answer (one request may be repeated often)
        self._max_batches: dict[str, int] = {}
        self._module = _client_module(protocol)
        self._client = self._connect()

    def _connect(self):
        try:
            if self.protocol == "http":
                return self._module.InferenceServerClient(self.url, connection_timeout=self.timeout,
                                                          network_timeout=self.timeout)
            return self._module.InferenceServerClient(self.url)
        except Exception as error:  # tritonclient's own, for a URL it cannot use
            raise ServingError(f"{self.protocol} {self.url}: {_said(error)}") from None

    def logits_of_frames(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """(N, classes) logits for BGR uint8 frames of one size, in requests of the model's largest batch."""
        batch = np.ascontiguousarray(np.stack(frames).astype(np.uint8, copy=False))
        return self._in_batches(f"{self.name}_frame", FRAME, batch, "UINT8")

    def logits_of_images(self, encoded: Sequence[bytes]) -> np.ndarray:
        """(N, classes) logits for encoded images (JPEG, PNG, ...), one request each (their lengths differ;
        the server batches them)."""
        return np.concatenate([self._infer(self.name, IMAGE, _image(data), "UINT8").as_numpy(LOGITS)
                               for data in encoded])

    def _in_batches(self, model: str, input_name: str, batch: np.ndarray, datatype: str) -> np.ndarray:
        step = self.max_batch(model)
        return np.concatenate([self._infer(model, input_name, batch[i : i + step], datatype).as_numpy(LOGITS)
                               for i in range(0, len(batch), step)])

    def max_batch(self, model: str) -> int:
        """The largest batch the served model takes in one request, from its config on the server."""
        if model not in self._max_batches:
            try:
                config = (self._client.get_model_config(model) if self.protocol == "http" else
                          self._client.get_model_config(model, as_json=True)["config"])
            except Exception as error:  # tritonclient's own, or its transport's
                if _unanswered(error):
                    raise ServingError(f"nothing answers {self.protocol} at {self.url} ({_said(error)}): is the "
                                       "server running there (edgeres triton serve), and is that its port for "
                                       f"{self.protocol}?") from None
                raise ServingError(f"{self.protocol} {self.url}: no model {model} ({_said(error)}); is this "
                                   "repository the one served there?") from None
            self._max_batches[model] = max(1, int(config.get("max_batch_size") or 0))  # 0: one at a time
        return self._max_batches[model]

    def classify_image(self, encoded: bytes, topk: int = 5) -> list[Classified]:
        """Triton's classification extension: the image's top `topk` labels, named by the label file."""
        result = self._infer(self.name, IMAGE, _image(encoded), "UINT8", class_count=topk)
        return [_classified(entry) for entry in result.as_numpy(LOGITS).reshape(-1)]  # [1, k] or, unbatched, [k]

    def _infer(self, model: str, input_name: str, batch: np.ndarray, datatype: str, class_count: int = 0):
        tensor = self._module.InferInput(input_name, list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch)
        output = self._module.InferRequestedOutput(LOGITS, class_count=class_count)
        for attempt in range(self.retries + 1):
            try:
                return self._client.infer(model, [tensor], outputs=[output], client_timeout=self.timeout) \
                    if self.protocol == "grpc" else self._client.infer(model, [tensor], outputs=[output])
            except Exception as error:  # tritonclient raises its own and its transport's exceptions
                if not _unanswered(error) or attempt == self.retries:
                    raise ServingError(f"{self.protocol} {self.url} model {model}: {_said(error)}") from None
                self.retried += 1
                time.sleep(self.retry_wait)
                self._client = self._reconnect()
        raise AssertionError("unreachable")

    def _reconnect(self):
        try:
            self._client.close()
        except Exception:  # a client whose connection the server cut may fail to close; it is dropped anyway
            pass
        return self._connect()

    def close(self) -> None:
        self._client.close()


def _client_module(protocol: str):
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as error:
        from ..errors import install_hint

        raise ServingError(f"tritonclient's {protocol} client does not import ({error}): add edgeres' [serve] "
                           f"extra: {install_hint('serve')}") from None
    return module


def _image(encoded: bytes) -> np.ndarray:
    """A batch of one encoded image: its bytes as UINT8 [1, length] (the convention of NVIDIA DALI's decoders)."""
    return np.frombuffer(bytes(encoded), np.uint8)[None]


def _classified(entry) -> Classified:
    score, index, label = (entry.decode() if isinstance(entry, bytes) else str(entry)).split(":", 2)
    return Classified(label, int(index), float(score))


def _unanswered(error: Exception) -> bool:
    """The server never answered (refused, reset, or went away mid-request), as opposed to an answer that
    is an error (a bad input, an unknown model), which sending again cannot change. A timeout is final: the
    server may be working on it, and a slow server must not be sent the same work again and again."""
    if isinstance(error, TimeoutError) or "timed out" in str(error).lower() or "deadline" in str(error).lower():
        return False
    if isinstance(error, OSError):
        return True
    status = str(getattr(error, "status", lambda: None)() or "")
    text = str(error).lower()
    return "unavailable" in status.lower() or any(word in text for word in UNANSWERED)


UNANSWERED = ("connection refused", "connection reset", "connection closed", "connection aborted", "broken pipe",
              "socket closed", "failed to connect", "unavailable", "unexpected eof")


def _said(error: Exception) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return (text or type(error).__name__).strip().splitlines()[0][:500]


@dataclass(frozen=True)
class ServedCheck:
    protocol: str
    frames: object  # GoldenCheck of the raw-frame path
    images: object  # GoldenCheck of the encoded (PNG, lossless) path

    @property
    def failures(self) -> list[str]:
        return [f"{path}: {failure}" for path, check in (("frames", self.frames), ("images", self.images))
                for failure in check.failures]


def check_served(export: Path, url: str, protocol: str = "http", name: str | None = None) -> ServedCheck:
    """Send the export's golden frames to the served model, raw and as PNG, and judge its logits by the
    artifact's rule (as `edgeres verify` judges a device's runtime)."""
    import cv2

    from ..golden import judge_golden

    golden = served_golden(export, name)
    served = ServedModel(url, golden.model, protocol)
    try:
        raw = served.logits_of_frames(list(golden.frames))
        images = served.logits_of_images([cv2.imencode(".png", frame)[1].tobytes() for frame in golden.frames])
    finally:
        served.close()
    mode = golden.record.precision  # the served runtime's own mode cannot be asked over the protocol
    return ServedCheck(protocol, *(judge_golden(logits, golden.reference, golden.expected, golden.record, mode,
                                                golden.path) for logits in (raw, images)))


@dataclass(frozen=True)
class ServedGolden:
    """An export's golden samples, with the record that judges them and the served model's name."""

    model: str
    record: object  # ArtifactRecord
    path: Path
    frames: np.ndarray
    reference: np.ndarray
    expected: np.ndarray


def served_golden(export: Path, name: str | None = None) -> ServedGolden:
    from ..artifact import read_record_file
    from ..golden import golden_samples

    ensemble_version = _ensemble_version(export, name)
    record = read_record_file(ensemble_version / RECORD_FILE)
    if not isinstance(record.golden, dict):
        raise ServingError(f"{ensemble_version / RECORD_FILE} says nothing of golden samples: the repository was "
                           "edited; export the set again")
    record.golden["file"] = GOLDEN_FILE  # the repository names it golden.npz beside the record
    path = ensemble_version / GOLDEN_FILE
    return ServedGolden(ensemble_version.parent.name, record, path, *golden_samples(path, record))


def _ensemble_version(export: Path, name: str | None) -> Path:
    """NAME/1 of an export folder (or of its model_repository), where the record and golden file travel."""
    repository = export / REPOSITORY if (export / REPOSITORY).is_dir() else export
    candidates = [p.parent.parent for p in repository.glob(f"{name or '*'}/1/{GOLDEN_FILE}")]
    if len(candidates) != 1:
        found = ", ".join(sorted(p.name for p in candidates)) or "none"
        raise ServingError(f"{export} should hold one edgeres model with golden samples ({found} found); give the "
                           "folder `edgeres triton export` wrote" + ("" if name else ", or --name"))
    return candidates[0] / "1"
