"""Calibration data: sources that yield preprocessed samples, plus tiny per-toolkit adapters."""

from .folder import IMAGE_SUFFIXES, CalibrationSet, read_image, read_image_folder
from .sources import read_calibration

__all__ = ["IMAGE_SUFFIXES", "CalibrationSet", "read_calibration", "read_image", "read_image_folder"]
