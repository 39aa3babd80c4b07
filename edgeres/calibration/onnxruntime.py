"""ONNX Runtime's calibration reader over a CalibrationSet."""

from __future__ import annotations

from typing import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..preprocess import Preprocess
from .folder import CalibrationSet


class CalibrationReader(CalibrationDataReader):
    """Feeds the calibration crops one at a time (batch 1, as the exported graph expects)."""

    def __init__(self, calibration: CalibrationSet, preprocess: Preprocess, input_name: str) -> None:
        self._calibration = calibration
        self._preprocess = preprocess
        self._input_name = input_name
        self._items: Iterator[np.ndarray] = iter(calibration.crops)

    def get_next(self) -> dict[str, np.ndarray] | None:
        crop = next(self._items, None)
        return None if crop is None else {self._input_name: self._preprocess.to_tensor(crop)[None]}

    def rewind(self) -> None:
        self._items = iter(self._calibration.crops)
