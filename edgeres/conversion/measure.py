"""Running an artifact the way a device does, and the images every artifact is judged on.

One runner for verification, the accuracy bar, golden samples and the report: the
runtime backend that `edgeres.Classifier` would pick for the file, fed by the artifact's
own preprocessing spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..calibration.folder import CalibrationSet
from ..logs import quiet
from ..metrics import Judged, agreement, judge
from ..models import LoadedModel
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
    try:
        for start in range(0, len(crops), step):
            rows.append(backend.run(spec.tensors(crops[start : start + step])))
    finally:
        close = getattr(backend, "close", None)  # a simulator's process ends here, not when collected
        if close is not None:
            close()
    return np.concatenate(rows).astype(np.float32, copy=False)


@dataclass
class EvalSet:
    """Crops an artifact is judged on (resized and cropped once), with their true classes when known,
    and the FP32 model's logits on them: computed once per conversion, where something needs them."""

    crops: list[np.ndarray]
    truth: np.ndarray | None
    source: str  # "validation", "held-out calibration", "calibration" or "random"
    fp32_logits: Callable[[list[np.ndarray]], np.ndarray] = field(repr=False)
    _reference: np.ndarray | None = field(default=None, repr=False)

    @property
    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = self.fp32_logits(self.crops)
        return self._reference

    def reference_of(self, count: int) -> np.ndarray:
        """FP32's logits on the first `count` crops, without computing the rest where nothing did yet."""
        return self.reference[:count] if self._reference is not None else self.fp32_logits(self.crops[:count])

    def judge(self, logits: np.ndarray) -> Judged:
        return judge(logits, self.reference, self.truth)

    def describe(self) -> str:
        return f"{len(self.crops)} {self.source} images"


STABILITY_IMAGES = 512


def fp32_stability(data: EvalSet, seed: int) -> dict:
    """How often the FP32 model keeps its own top-1 when every pixel of its (uint8) crops moves by one grey
    level at most (seeded), on up to STABILITY_IMAGES of them spread over the set.

    One grey level is about the size of the rounding an INT8 artifact applies to its input (one
    step of a normalised input's range); where FP32 itself changes a few percent of its answers
    under it, INT8's agreement with FP32 is partly decided by rounding on near-ties.
    """
    chosen = np.unique(np.linspace(0, len(data.crops) - 1, min(len(data.crops), STABILITY_IMAGES)).astype(int))
    rng = np.random.default_rng(seed)
    nudged = [np.clip(data.crops[i].astype(np.int16) + rng.integers(-1, 2, data.crops[i].shape), 0, 255)
              .astype(np.uint8) for i in chosen]
    logits = np.concatenate([data.fp32_logits(nudged[i:i + BATCH]) for i in range(0, len(nudged), BATCH)])
    kept = agreement(data.reference[chosen], logits)
    return {"agreement": kept, "images": len(chosen), "changed": int(round((1 - kept) * len(chosen))),
            "perturbation": "every pixel of the crop moved by -1, 0 or +1 grey level (seeded)"}


MAX_EVAL_IMAGES = 1000
RANDOM_IMAGES = 8  # without calibration images, exports are checked on seeded random images


def evaluation_set(model: LoadedModel, spec: Preprocess, val: Path | None, calibration: CalibrationSet | None,
                   seed: int, held_out: CalibrationSet | None = None) -> EvalSet:
    """The labelled --val images; else calibration images held out from quantization, or the calibration
    images themselves (agreement only); else seeded random images."""
    if val is not None:
        crops, truth = labelled_crops(val, model.labels, spec, "--val")
        source = "validation"
    elif held_out is not None:
        crops, truth, source = held_out.crops, None, "held-out calibration"
    elif calibration is not None:
        crops, truth, source = calibration.crops, None, "calibration"
    else:
        crops, truth, source = random_crops(spec, seed), None, "random"
    return EvalSet(crops, truth, source, lambda chosen: model.logits(spec.tensors(chosen)))


def labelled_crops(folder: Path, labels: list[str], spec: Preprocess, option: str
                   ) -> tuple[list[np.ndarray], np.ndarray]:
    """Up to MAX_EVAL_IMAGES images of a labelled ImageFolder, spread over its classes, as crops."""
    from ..errors import EvaluationError
    from ..evaluate import read_labelled_folder
    from ..images import ImageError, decode_image

    images = read_labelled_folder(folder, labels)
    step = max(1, len(images.paths) // MAX_EVAL_IMAGES)  # an even spread over the classes
    crops, truth = [], []
    for path, label in zip(images.paths[::step][:MAX_EVAL_IMAGES], images.classes[::step][:MAX_EVAL_IMAGES]):
        try:
            image = decode_image(path)
        except ImageError as error:
            raise EvaluationError(f"{option}: {error}; remove it or replace it") from None
        crops.append(spec.resize_and_crop(image))
        truth.append(label)
    return crops, np.array(truth)


def random_crops(spec: Preprocess, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (spec.crop, spec.crop, 3), dtype=np.uint8) for _ in range(RANDOM_IMAGES)]
