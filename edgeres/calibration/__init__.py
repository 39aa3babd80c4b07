"""Calibration data: sources that yield preprocessed samples, plus tiny per-toolkit adapters.

The readers (OpenCV) are imported on first use, so the CLI's help can show the default size.
"""

from importlib import import_module

DEFAULT_CALIB_SIZE = 300

_LAZY = {"IMAGE_SUFFIXES": ".folder", "CalibrationSet": ".folder", "read_image": ".folder",
         "read_image_folder": ".folder", "read_calibration": ".sources"}

__all__ = ["DEFAULT_CALIB_SIZE", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
