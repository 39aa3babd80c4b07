"""ONNX Runtime's calibration reader over a CalibrationSet."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from .folder import CalibrationSet


class CalibrationReader(CalibrationDataReader):
    """Feeds the samples one at a time (batch 1, as the exported graph expects)."""

    def __init__(self, calibration: CalibrationSet, input_name: str) -> None:
        self._calibration = calibration
        self._input_name = input_name
        self._items: Iterator[np.ndarray] = iter(calibration.samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        sample = next(self._items, None)
        return None if sample is None else {self._input_name: sample[None]}

    def rewind(self) -> None:
        self._items = iter(self._calibration.samples)
