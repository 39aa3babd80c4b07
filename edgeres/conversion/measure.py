"""Running an artifact the way a device does, for every check the pipeline makes.

One runner for verification, the accuracy bar, golden samples and the report: the
runtime backend that `edgeres.Classifier` would pick for the file, fed by the artifact's
own preprocessing spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..logs import quiet
from ..preprocess import Preprocess
from ..runtime import open_backend

BATCH = 64


def artifact_logits(path: Path, spec: Preprocess, crops: Sequence[np.ndarray], threads: int | None = None,
                    precision: str | None = None) -> np.ndarray:
    """Logits of the artifact at `path` for crops made by resize_and_crop, through its runtime backend
    opened as Classifier opens it (`precision` None: the artifact's own mode)."""
    with quiet():  # a runtime's first load may log (ExecuTorch's native cpuinfo probes); --verbose shows it
        backend = open_backend(path, threads, None, precision)
    step = backend.max_batch or BATCH
    rows = []
    for start in range(0, len(crops), step):
        rows.append(backend.run(spec.tensors(crops[start : start + step])))
    return np.concatenate(rows).astype(np.float32, copy=False)


@dataclass
class EvalSet:
    """Crops an artifact is judged on (resized and cropped once), with their true classes when known."""

    crops: list[np.ndarray]
    truth: np.ndarray | None
    source: str  # "validation", "calibration" or "random"


@dataclass
class Judged:
    accuracy: float | None
    fp32_accuracy: float | None
    agreement: float
    mean_kl: float
    images: int

    @property
    def drop_points(self) -> float | None:
        return None if self.accuracy is None else 100 * (self.fp32_accuracy - self.accuracy)


def judge(logits: np.ndarray, reference: np.ndarray, truth: np.ndarray | None) -> Judged:
    """An artifact's logits against FP32's on the same crops."""
    from ..evaluate import mean_kl

    labelled = truth is not None
    # a row with a NaN or inf is wrong whatever its argmax says: it can neither agree nor be right
    answers = np.where(np.isfinite(logits).all(1), logits.argmax(1), -1)
    finite = bool(np.isfinite(logits).all())
    return Judged(
        accuracy=float((answers == truth).mean()) if labelled else None,
        fp32_accuracy=float((reference.argmax(1) == truth).mean()) if labelled else None,
        agreement=float((answers == reference.argmax(1)).mean()),
        mean_kl=mean_kl(reference, logits) if finite else float("inf"), images=len(logits),
    )
